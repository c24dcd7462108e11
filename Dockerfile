# p2prec images, two targets of one build:
#   node    (default for the nodes and the key generation): numpy, zmq, aiohttp; no torch
#   trainer (p2prec trainer): node + the CPU build of torch
# docker-compose.yml builds both; by hand:
#   docker build --target node -t p2prec:node .
#   docker build --target trainer -t p2prec:trainer .
FROM python:3.11-slim AS base
# iproute2: `tc` for the chaos scripts' WAN delay and bandwidth limits (needs NET_ADMIN)
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY p2prec ./p2prec
COPY conf ./conf
RUN python -m pip install --no-cache-dir .
ENTRYPOINT ["p2prec"]
CMD ["version"]

FROM base AS trainer
ARG TORCH_VERSION=2.13.0
# The CPU wheel index: the default index's torch pulls the ~5 GB CUDA build.
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url https://download.pytorch.org/whl/cpu

FROM base AS node
