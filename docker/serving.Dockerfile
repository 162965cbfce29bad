# The Sightline gRPC server (serving/): LiteRT, gRPC, Prometheus and Pillow; never TensorFlow.
#
#   docker build -f docker/serving.Dockerfile -t sightline-serve .
#   docker run --read-only -v "$PWD/models:/models:ro" -p 8500:8500 -p 8502:8502 sightline-serve
#
# Made for a pod with runAsNonRoot, readOnlyRootFilesystem and every capability dropped: it runs
# as uid 10001, writes nothing at run time (byte code is compiled here, and
# PYTHONDONTWRITEBYTECODE stops Python from trying) and reads its models from /models, a volume.
# No HEALTHCHECK: Kubernetes probes the gRPC health service itself.
# tests/docker/ lints this file, checks these facts, and runs the server as that uid.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sightline
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving ./serving
# Only the serve extra, and not editable: the venv then holds the code too. training/ is not
# copied, so its console script would start nothing. Byte code uses unchecked-hash
# invalidation: valid whatever the copied files' mtimes, and never rewritten at run time.
RUN /opt/sightline/bin/pip install '.[serve]' \
 && rm /opt/sightline/bin/sightline-train \
 && /opt/sightline/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/sightline/lib

FROM python:3.11-slim-bookworm
# A numeric user (Kubernetes' runAsNonRoot can verify a number only) with no home. The base
# image ships the standard library without byte code: compile it, or every start recompiles it.
RUN groupadd --system --gid 10001 sightline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sightline \
 && python -m compileall -q -j 0 /usr/local/lib/python3.11 \
 && mkdir /models
COPY --from=builder /opt/sightline /opt/sightline
ENV PATH=/opt/sightline/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC (both APIs, health, reflection) and Prometheus /metrics: ServerConfig's defaults.
EXPOSE 8500 8502
ENTRYPOINT ["sightline-serve"]
# Kubernetes `args:` replace these: repeat --model-repository there. The host stays the
# default, [::], every interface.
CMD ["--model-repository", "/models"]
