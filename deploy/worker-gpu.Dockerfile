# The GPU Celery worker: onnxruntime-gpu on CUDA + cuDNN, no TensorFlow (extra `worker-gpu`).
#
# Build context is the repository root:
#   docker build -f deploy/worker-gpu.Dockerfile -t skyserve-worker-gpu .
# Needs the NVIDIA Container Toolkit on the host (compose reserves one GPU).
# onnxruntime-gpu 1.31 on PyPI is built for CUDA 13 and cuDNN 9, hence this base;
# when moving one, move the other (ORT's install page lists the pairs).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python is 3.12 (skyserve needs >= 3.11). The same interpreter path
# is in both stages, so the virtualenv built in `deps` runs unchanged in `runtime`.
# Not version-pinned: the base tag pins the release, and Ubuntu drops superseded
# package versions from its archive, which would break a pinned build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM base AS deps
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml ./
COPY deploy/pyproject_deps.py deploy/
# Pin onnxruntime-gpu to the release matching the CUDA/cuDNN of the base image.
RUN python deploy/pyproject_deps.py worker-gpu > requirements.txt \
 && pip install -r requirements.txt "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"

FROM base AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/app \
    SKYSERVE_MODELS_DIR=/srv/models \
    SKYSERVE_ONNX_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]' \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 skyserve \
 && useradd --system --uid 10001 --gid skyserve --create-home --home-dir /home/skyserve skyserve
COPY --from=deps /opt/venv /opt/venv
COPY --chown=10001:10001 models/ /srv/models/
COPY shared/ /srv/app/shared/
COPY services/ /srv/app/services/
RUN python -m compileall -q /srv/app
WORKDIR /srv/app
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=30s --start-period=90s --retries=3 \
    CMD ["sh", "-c", "celery -A services.worker.celery_app inspect ping -d \"celery@$HOSTNAME\" --timeout 10 || exit 1"]
# One process owns the GPU; it batches images per task instead of forking siblings
# that would each hold their own CUDA context and copy of every model.
CMD ["celery", "-A", "services.worker.celery_app", "worker", "--loglevel=INFO", "-Q", "skyserve", "--concurrency=1"]
