# Minimal p2prec image: the inference-node side only (no torch; the trainer image comes later).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY p2prec ./p2prec
COPY conf ./conf
RUN python -m pip install --no-cache-dir .

ENTRYPOINT ["p2prec"]
CMD ["version"]
