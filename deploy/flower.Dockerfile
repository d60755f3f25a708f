# Flower, the Celery monitoring UI, on port 5555. It imports the worker's Celery app,
# so it gets the worker's dependencies plus `flower`, which no other image carries.
#
# Build context is the repository root:
#   docker build -f deploy/flower.Dockerfile -t skyserve-flower .

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG FLOWER_VERSION=2.2.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml ./
COPY deploy/pyproject_deps.py deploy/
RUN python deploy/pyproject_deps.py worker > requirements.txt \
 && pip install -r requirements.txt "flower==${FLOWER_VERSION}"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/app \
    SKYSERVE_MODELS_DIR=/srv/models
RUN groupadd --system --gid 10001 skyserve \
 && useradd --system --uid 10001 --gid skyserve --create-home --home-dir /home/skyserve skyserve
COPY --from=deps /opt/venv /opt/venv
COPY shared/ /srv/app/shared/
COPY services/ /srv/app/services/
RUN python -m compileall -q /srv/app
WORKDIR /srv/app
USER 10001:10001
EXPOSE 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck', timeout=4)"]
CMD ["celery", "-A", "services.worker.celery_app", "flower", "--port=5555"]
