"""The FastAPI gateway: ``create_app()`` builds it; ``uvicorn --factory`` runs it.

It validates input, stores payloads and job records in Redis, enqueues jobs for
the Celery workers by task name and answers ``202`` at once. It imports neither
TensorFlow nor ONNX Runtime.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request, Response
from prometheus_client import make_asgi_app

from services.api.metrics import REQUEST_SECONDS
from services.api.problems import install_problem_handlers
from services.api.queue import JobQueue
from services.api.routes import batches, health, jobs, models, web
from services.api.settings import ApiSettings, get_settings
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.registry import RegistryReader
from shared.schemas import Problem

__all__ = ["create_app"]

DESCRIPTION = """
skyserve answers questions about sky images — a spiral galaxy's inclination, whether a
human would reject the image, Galaxy Zoo morphology votes, what kind of object it is —
with ensembles and honest uncertainties.

Submit with `POST /v1/jobs` (multipart image + task names), then poll the `Location`
it returns, or add `?wait=10` to wait for the answer in one round trip. Every error
is an `application/problem+json` document that says what was wrong.
"""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    settings
        Configuration; read from the environment when omitted.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )
        app.state.settings = settings
        app.state.store = JobStore(
            client, prefix=settings.key_prefix, ttl_seconds=settings.job_ttl_seconds
        )
        app.state.batches = BatchStore(
            client,
            prefix=settings.key_prefix,
            ttl_seconds=settings.job_ttl_seconds,
            max_stored_bytes=settings.max_batch_stored_bytes,
        )
        app.state.registry = RegistryReader(settings.models_dir)
        app.state.queue = JobQueue(settings)
        try:
            yield
        finally:
            app.state.queue.close()
            client.close()

    app = FastAPI(
        title="skyserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        root_path=settings.root_path,
        openapi_tags=[
            {"name": "jobs", "description": "Submit images and read answers."},
            {"name": "batches", "description": "Whole catalogs as one job, per-row results."},
            {"name": "models", "description": "Tasks and the model versions that serve them."},
            {"name": "health", "description": "Liveness, readiness, metrics."},
        ],
    )
    install_problem_handlers(app)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/metrics", make_asgi_app())

    @app.middleware("http")
    async def _time_requests(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        REQUEST_SECONDS.labels(
            method=request.method,
            route=getattr(route, "path", "unmatched"),
            status=str(response.status_code),
        ).observe(time.perf_counter() - start)
        return response

    # Problem appears only in `responses=`; register it so the $ref resolves.
    _openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        schema = _openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
