# The trainer: TensorFlow (CPU), tf2onnx, GalSim (extra `trainer`). Runs on demand,
# not as a long-lived service:
#   docker compose --profile train run --rm trainer --help
#
# Build context is the repository root:
#   docker build -f deploy/trainer.Dockerfile -t skyserve-trainer .

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
RUN python deploy/pyproject_deps.py trainer > requirements.txt \
 && pip install -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/app \
    SKYSERVE_MODELS_DIR=/srv/models \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1 \
    SKYSERVE_TRAINER_BACKBONE_DIR=/home/skyserve/.cache/backbones \
    SKYSERVE_TRAINER_RUNS_DIR=/home/skyserve/.cache/runs
RUN groupadd --system --gid 10001 skyserve \
 && useradd --system --uid 10001 --gid skyserve --create-home --home-dir /home/skyserve skyserve
COPY --from=deps /opt/venv /opt/venv
# Owned by the skyserve user: the trainer publishes new versions into /srv/models.
COPY --chown=10001:10001 models/ /srv/models/
COPY shared/ /srv/app/shared/
COPY services/ /srv/app/services/
RUN python -m compileall -q /srv/app
WORKDIR /srv/app
USER 10001:10001
# Same program as the `skyserve-train` console script.
ENTRYPOINT ["python", "-m", "services.trainer"]
CMD ["--help"]
