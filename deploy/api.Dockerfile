# The HTTP API: FastAPI under uvicorn. No TensorFlow, no ONNX Runtime (extra `api`).
#
# Build context is the repository root:
#   docker build -f deploy/api.Dockerfile -t skyserve-api .
# Stage `deps` builds a virtualenv from pyproject.toml alone, so editing the source
# reuses the cached dependency layer; stage `runtime` is a slim image running as a
# non-root user with only that virtualenv, the source and the default models.

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
RUN python deploy/pyproject_deps.py api > requirements.txt \
 && pip install -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/app \
    SKYSERVE_MODELS_DIR=/srv/models
# One fixed UID/GID in every skyserve image: the shared `models` volume is seeded
# with this owner, and the trainer (same UID) can then publish into it.
RUN groupadd --system --gid 10001 skyserve \
 && useradd --system --uid 10001 --gid skyserve --create-home --home-dir /home/skyserve skyserve
COPY --from=deps /opt/venv /opt/venv
# Default models committed in the repo; compose mounts the `models` volume over
# /srv/models and Docker seeds that volume from here on first use.
COPY --chown=10001:10001 models/ /srv/models/
COPY shared/ /srv/app/shared/
COPY services/ /srv/app/services/
RUN python -m compileall -q /srv/app
WORKDIR /srv/app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "--factory", "services.api.app:create_app", "--host", "0.0.0.0", "--port", "8000"]
