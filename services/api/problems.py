"""Every error leaves the API as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import PROBLEM_TYPE_BASE, SkyserveError
from shared.schemas import Problem

__all__ = ["PROBLEM_MEDIA_TYPE", "problem_response", "install_problem_handlers", "problem_responses"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)


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
        return problem_response(exc.to_problem(instance=request.url.path))

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
