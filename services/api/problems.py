"""Every error leaves the API as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import PROBLEM_TYPE_BASE, ServiceUnavailable, SkyserveError
from shared.schemas import Problem

__all__ = ["PROBLEM_MEDIA_TYPE", "problem_response", "install_problem_handlers", "problem_responses"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)

#: Redis errors that mean "not now" rather than "a bug": answered 503 with Retry-After.
STORE_UNAVAILABLE: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,  # includes BusyLoadingError (restarting, loading the AOF)
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)


def problem_response(problem: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response with the problem media type and the problem's status."""
    return JSONResponse(
        problem, status_code=problem["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Map our errors, validation errors and stray HTTP errors to problem documents."""

    @app.exception_handler(SkyserveError)
    async def _skyserve(request: Request, exc: SkyserveError) -> JSONResponse:
        from services.api.metrics import PROBLEMS

        PROBLEMS.labels(code=exc.code).inc()
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return problem_response(exc.to_problem(instance=request.url.path), headers=headers)

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis down, restarting (loading its AOF), read-only after a failover, or full
        # (noeviction): the request may well work in a few seconds, so 503 + Retry-After.
        # The client reconnects by itself on the next request. Anything else is a bug.
        if not isinstance(exc, STORE_UNAVAILABLE):
            return await _unexpected(request, exc)
        log.warning("Redis unavailable on %s: %s", request.url.path, exc)
        detail = (
            "The job store is full; finished work is being cleared, try again shortly."
            if isinstance(exc, redis.exceptions.OutOfMemoryError)
            else "The job store (Redis) cannot be reached right now; try again shortly."
        )
        return await _skyserve(request, ServiceUnavailable(detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(
            {
                "type": PROBLEM_TYPE_BASE + "invalid-request",
                "title": "The request is not valid",
                "status": 422,
                "detail": where or "The request does not match the API schema.",
                "code": "invalid-request",
                "instance": request.url.path,
                "errors": errors,
            }
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            {
                "type": "about:blank",
                "title": _reason(exc.status_code),
                "status": exc.status_code,
                "detail": str(exc.detail),
                "instance": request.url.path,
            },
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A 500 is a bug; log it with the traceback so it can be fixed.
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return problem_response(
            {
                "type": PROBLEM_TYPE_BASE + "internal",
                "title": "Internal error",
                "status": 500,
                "detail": f"An unexpected {type(exc).__name__} occurred; it has been logged.",
                "code": "internal",
                "instance": request.url.path,
            }
        )


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem documents for ``statuses``."""
    from http import HTTPStatus

    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
