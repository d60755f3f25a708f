"""The FastAPI gateway: ``create_app()`` builds it; ``uvicorn --factory`` runs it.

It validates input, stores payloads and job records in Redis, enqueues jobs for
the Celery workers by task name and answers ``202`` at once. It imports neither
TensorFlow nor ONNX Runtime.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI

from services.api.access_log import AccessLogMiddleware
from services.api.limits import ActiveJobs, BodyLimitMiddleware, RateLimiter, TimeoutMiddleware
from services.api.metrics import watch_queue
from services.api.problems import CatchAllMiddleware, install_problem_handlers
from services.api.queue import JobQueue
from services.api.routes import batches, docs, health, jobs, metrics, models, web
from services.api.settings import ApiSettings, get_settings
from services.api.waiting import JobReader, JobWaiter
from shared.apikeys import KeyStore
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.logs import configure_logging
from shared.registry import RegistryReader
from shared.schemas import Problem

__all__ = ["create_app"]

log = logging.getLogger("skyserve.api")

DESCRIPTION = """
skyserve answers questions about sky images — a spiral galaxy's inclination, whether a
human would reject the image, Galaxy Zoo morphology votes, what kind of object it is —
with ensembles and honest uncertainties.

Submit with `POST /v1/jobs` (multipart image + task names), then poll the `Location`
it returns, or add `?wait=10` to wait for the answer in one round trip. Every error
is an `application/problem+json` document that says what was wrong.
"""


def _json_server_logs() -> None:
    """Route uvicorn's own log lines through skyserve's JSON handler.

    uvicorn writes plain text through handlers of its own, which would break "one JSON
    object per line" for log shippers; its access line is dropped, as skyserve.access
    logs every request already, with its request id. (The two lines uvicorn prints
    before the app starts stay text: nothing of the app runs yet.)
    """
    for name in ("uvicorn", "uvicorn.error"):
        server = logging.getLogger(name)
        server.handlers.clear()
        server.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


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
        configure_logging(settings.log_format, settings.log_level)
        if settings.log_format == "json":
            _json_server_logs()
        # skyserve.access logs every request (with its request id); uvicorn's own
        # access line would say it a second time.
        logging.getLogger("uvicorn.access").disabled = True
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
        # The hot path of GET /v1/jobs/{id} reads on the event loop, without a thread hop;
        # the waiter's subscription has a connection of its own, idle between jobs.
        async_client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )
        app.state.reader = JobReader(async_client, prefix=settings.key_prefix)
        app.state.waiter = JobWaiter(
            aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_keepalive=True),
            prefix=settings.key_prefix,
            fallback_seconds=settings.poll_interval_seconds,
        )
        await app.state.waiter.start()
        watch_queue(client, settings.celery_queue)
        app.state.keys = KeyStore(client, prefix=settings.key_prefix)
        app.state.rate_limiter = RateLimiter(
            client, prefix=settings.key_prefix, per_minute=settings.rate_limit_per_minute
        )
        app.state.active_jobs = ActiveJobs(
            client,
            prefix=settings.key_prefix,
            limit=settings.max_active_jobs_per_key,
            ttl_seconds=settings.job_ttl_seconds,
        )
        if settings.auth_mode == "open":
            log.warning(
                "auth: OPEN - no API keys; anyone who reaches this port can submit and read "
                "every job. For one user on loopback only (SKYSERVE_AUTH_MODE=keys otherwise)."
            )
        else:
            log.info(
                "auth: keys - API keys required (rate %s/min, %s unfinished jobs per key)",
                settings.rate_limit_per_minute or "unlimited",
                settings.max_active_jobs_per_key or "unlimited",
            )
        try:
            yield
        finally:
            await app.state.waiter.stop()
            await async_client.aclose()
            app.state.queue.close()
            client.close()

    app = FastAPI(
        title="skyserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by routes.docs from local assets instead of FastAPI's CDN pages.
        docs_url=None,
        redoc_url=None,
        # Passed only when set: FastAPI warns about the parameter even when it is empty.
        **({"root_path": settings.root_path} if settings.root_path else {}),
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
    app.include_router(metrics.router)
    app.include_router(docs.router)
    app.include_router(web.router)
    # Outermost last: the access log sees every answer, the catch-all answers a bug's
    # 500 without dropping the connection, then the time and body limits.
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_seconds)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(AccessLogMiddleware)

    # Problem appears only in `responses=`; register it so the $ref resolves.
    _openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        schema = _openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for name, component in jobs.OPENAPI_COMPONENTS.items():
            schema["components"]["schemas"].setdefault(name, component)
        if settings.auth_mode == "keys":
            _declare_bearer_keys(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# Paths a key is needed for in keys mode (services.api.auth says which scope).
_KEYED_PREFIXES = ("/v1/jobs", "/v1/batches", "/metrics")


def _declare_bearer_keys(schema: dict) -> None:  # type: ignore[type-arg]
    """Tell OpenAPI clients (and /docs' Authorize button) that keyed calls take a bearer key."""
    schema["components"].setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `skyserve-admin keys create`, sent as "
        "`Authorization: Bearer <key>`.",
    }
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(_KEYED_PREFIXES):
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = [{"apiKey": []}]
