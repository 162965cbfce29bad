# Sightline training (training/): Keras 3 on TensorFlow (CPU), quantisation and reports.
#
#   docker build -f docker/training.Dockerfile -t sightline-train .
#   docker run -v "$PWD/artifacts:/workspace/artifacts" sightline-train train --set epochs=5
#
# Runs as uid 10001 in /workspace, its home and working directory: artifacts go to
# /workspace/artifacts (mount a volume there), Keras and Matplotlib keep their settings in the
# home. With a read-only root filesystem, mount writable volumes at /workspace and /tmp
# (quantisation writes its SavedModel to a temporary directory).

FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sightline
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving ./serving
COPY training ./training
# The train extra, and serve's too: `quantize` verifies each TFLite file with LiteRT
# (serving.runtime), which only the serve extra installs.
RUN /opt/sightline/bin/pip install '.[train,serve]' \
 && /opt/sightline/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/sightline/lib

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 sightline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /workspace \
        --shell /usr/sbin/nologin sightline \
 && install -d -o 10001 -g 10001 -m 0755 /workspace \
 && python -m compileall -q -j 0 /usr/local/lib/python3.11
COPY --from=builder /opt/sightline /opt/sightline
ENV PATH=/opt/sightline/bin:$PATH \
    HOME=/workspace \
    MPLBACKEND=Agg \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["sightline-train"]
# The built-in synthetic shapes dataset: trains with nothing mounted but /workspace/artifacts.
CMD ["train"]
