# p2prec images, two targets of one build:
#   node    (default for the nodes and the key generation): numpy, zmq, aiohttp; no torch
#   trainer (p2prec trainer): node + the CPU build of torch
# docker-compose.yml builds both; by hand:
#   docker build --target node -t p2prec:node .
#   docker build --target trainer -t p2prec:trainer .
# The wheel is built in its own stage, where gcc compiles the store's kernels
# (p2prec/model/_kernels.c); the images carry the wheel, not the compiler.
FROM python:3.11-slim AS wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY p2prec ./p2prec
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/p2prec-*.whl | grep -q "_kernels\..*\.so"

FROM python:3.11-slim AS base
# iproute2: `tc` for the chaos scripts' WAN delay and bandwidth limits (needs NET_ADMIN)
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=wheel /wheels /wheels
COPY conf ./conf
RUN python -m pip install --no-cache-dir /wheels/p2prec-*.whl && rm -rf /wheels
ENTRYPOINT ["p2prec"]
CMD ["version"]

FROM base AS trainer
ARG TORCH_VERSION=2.13.0
# The CPU wheel index: the default index's torch pulls the ~5 GB CUDA build.
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url https://download.pytorch.org/whl/cpu

FROM base AS node
