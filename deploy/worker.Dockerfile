# The CPU Celery worker: ONNX Runtime (CPU), no TensorFlow (extra `worker`).
#
# Build context is the repository root:
#   docker build -f deploy/worker.Dockerfile -t skyserve-worker .
# Scale it with `docker compose up --scale worker=N`; every replica consumes the
# same queue. Stages as in api.Dockerfile: dependencies first, then the source.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml ./
COPY deploy/pyproject_deps.py deploy/
RUN python deploy/pyproject_deps.py worker > requirements.txt \
 && pip install -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/app \
    SKYSERVE_MODELS_DIR=/srv/models \
    SKYSERVE_ONNX_PROVIDERS='["CPUExecutionProvider"]'
RUN groupadd --system --gid 10001 skyserve \
 && useradd --system --uid 10001 --gid skyserve --create-home --home-dir /home/skyserve skyserve
COPY --from=deps /opt/venv /opt/venv
COPY --chown=10001:10001 models/ /srv/models/
COPY shared/ /srv/app/shared/
COPY services/ /srv/app/services/
RUN python -m compileall -q /srv/app
WORKDIR /srv/app
USER 10001:10001
# Alive = this node answers a broadcast ping through the broker.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A services.worker.celery_app inspect ping -d \"celery@$HOSTNAME\" --timeout 10 || exit 1"]
CMD ["celery", "-A", "services.worker.celery_app", "worker", "--loglevel=INFO", "-Q", "skyserve"]
