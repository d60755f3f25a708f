"""Every error leaves the API as RFC 9457 ``application/problem+json``, documented in one place.

:func:`install_problem_handlers` maps our errors, validation errors, stray HTTP errors
and (as a last resort, logged) any other exception to problem documents; a bug's
``500`` is answered by a middleware that does not re-raise, so the client's
keep-alive connection survives it. :func:`problem_responses` is what every route
puts in ``responses=``: the problem statuses it can answer, each with a real example.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import PROBLEM_TYPE_BASE, ServiceUnavailable, SkyserveError
from shared.schemas import Problem

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "problem_response",
    "problem_headers",
    "install_problem_handlers",
    "problem_responses",
    "CatchAllMiddleware",
]

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


def problem_headers(error: SkyserveError) -> dict[str, str]:
    """HTTP headers a problem implies: ``Retry-After`` (429, 503), ``WWW-Authenticate`` (401)."""
    headers: dict[str, str] = {}
    retry_after = error.extra.get("retry_after", error.retry_after)
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="skyserve"'
    return headers


def install_problem_handlers(app: FastAPI) -> None:
    """Map our errors, validation errors and stray HTTP errors to problem documents."""

    @app.exception_handler(SkyserveError)
    async def _skyserve(request: Request, exc: SkyserveError) -> JSONResponse:
        from services.api.metrics import PROBLEMS

        PROBLEMS.labels(code=exc.code).inc()
        return problem_response(exc.to_problem(instance=request.url.path), problem_headers(exc))

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
            {"loc": list(e.get("loc", ())), "msg": _readable(e), "type": e.get("type", "")}
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
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette's Allow names the first route's methods; a path served by several
            # routes (GET and DELETE /v1/jobs/{id}) must list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            {
                "type": "about:blank",
                "title": _reason(exc.status_code),
                "status": exc.status_code,
                "detail": str(exc.detail),
                # Every problem carries a code (docs/api.md): here the reason phrase's slug.
                "code": _reason(exc.status_code).lower().replace(" ", "-"),
                "instance": request.url.path,
            },
            headers=headers or None,
        )



class CatchAllMiddleware:
    """Answer an unhandled exception with a logged ``500`` problem, without re-raising.

    Starlette's own last-resort handler re-raises after answering, and the server then
    drops the connection; a client on keep-alive should lose one request to a bug,
    not its connection. Only bugs get here: every client mistake is a 4xx before it.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            if started:
                raise  # half an answer is out: only closing the connection tells the client
            body = json.dumps(
                {
                    "type": PROBLEM_TYPE_BASE + "internal",
                    "title": "Internal error",
                    "status": 500,
                    "detail": f"An unexpected {type(exc).__name__} occurred; it has been logged.",
                    "code": "internal",
                    "instance": scope["path"],
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


#: Path ids by name: what a malformed one is, in words instead of a regular expression.
_ID_NAMES = {"job_id": ("job", "POST /v1/jobs"), "batch_id": ("batch", "POST /v1/batches")}


def _readable(error: Any) -> str:
    """A validation message a person can act on (ids are not explained by their regex)."""
    loc = tuple(error.get("loc", ()))
    pattern = error.get("type") == "string_pattern_mismatch"
    if pattern and loc[:1] == ("path",) and loc[-1] in _ID_NAMES:
        what, where = _ID_NAMES[str(loc[-1])]
        given = str(error.get("input", ""))[:40]
        return (
            f"{given!r} is not a {what} id: ids are 32 lowercase hexadecimal characters, "
            f"as {where} returned them"
        )
    return str(error.get("msg", ""))


def _allowed_methods(request: Request) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_EXAMPLES: dict[int, dict[str, Any]] = {
    401: {
        "type": PROBLEM_TYPE_BASE + "unauthenticated",
        "title": "An API key is required",
        "status": 401,
        "detail": "This skyserve needs an API key: send 'Authorization: Bearer <key>'.",
        "code": "unauthenticated",
    },
    403: {
        "type": PROBLEM_TYPE_BASE + "forbidden",
        "title": "This API key may not do that",
        "status": 403,
        "detail": "The key 3f2a9c1b7d4e has the scopes read; this call needs 'submit'.",
        "code": "forbidden",
        "key_id": "3f2a9c1b7d4e",
        "needed_scope": "submit",
    },
    404: {
        "type": PROBLEM_TYPE_BASE + "job-not-found",
        "title": "No such job",
        "status": 404,
        "detail": "There is no job '9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d' (it may have expired).",
        "code": "job-not-found",
    },
    409: {
        "type": PROBLEM_TYPE_BASE + "job-not-cancellable",
        "title": "The job has already finished",
        "status": 409,
        "detail": "Job 9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d already succeeded; there is nothing to cancel.",
        "code": "job-not-cancellable",
        "status_now": "succeeded",
    },
    413: {
        "type": PROBLEM_TYPE_BASE + "request-too-large",
        "title": "The request body is too large",
        "status": 413,
        "detail": "The request body passed 16,842,752 bytes, the most this call takes.",
        "code": "request-too-large",
        "max_bytes": 16842752,
    },
    415: {
        "type": PROBLEM_TYPE_BASE + "unsupported-media-type",
        "title": "The file type is not supported",
        "status": 415,
        "detail": "The file is not an image skyserve can read. Send PNG, JPEG, GIF, TIFF, "
        "WebP, BMP or FITS.",
        "code": "unsupported-media-type",
    },
    422: {
        "type": PROBLEM_TYPE_BASE + "invalid-request",
        "title": "The request is not valid",
        "status": 422,
        "detail": "Version pin 'inclination=x' is not of the form task=version, e.g. inclination=1.",
        "code": "invalid-request",
    },
    429: {
        "type": PROBLEM_TYPE_BASE + "rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "The key 3f2a9c1b7d4e made more than 1200 requests this minute; wait 17 s.",
        "code": "rate-limited",
        "retry_after": 17,
        "limit_per_minute": 1200,
    },
    503: {
        "type": PROBLEM_TYPE_BASE + "service-unavailable",
        "title": "A backing service is unavailable",
        "status": 503,
        "detail": "The job queue is unreachable: Error 111 connecting to redis:6379.",
        "code": "service-unavailable",
    },
}
#: What any route may answer: a body past the limit, malformed parameters, a timeout.
COMMON_STATUSES = (413, 422, 503)
#: What a route behind API keys adds.
AUTH_STATUSES = (401, 403, 429)


def problem_responses(*statuses: int, auth: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem documents a route can answer.

    Every route answers :data:`COMMON_STATUSES`; ``auth=True`` adds
    :data:`AUTH_STATUSES`. Each entry has the ``Problem`` schema and a real example.
    """
    from http import HTTPStatus

    wanted = sorted(set(statuses) | set(COMMON_STATUSES) | (set(AUTH_STATUSES) if auth else set()))
    responses: dict[int | str, dict[str, Any]] = {}
    for status in wanted:
        entry: dict[str, Any] = {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "example": _EXAMPLES.get(status, {"title": HTTPStatus(status).phrase, "status": status}),
        }
        responses[status] = {
            "description": HTTPStatus(status).phrase + " (a problem document)",
            "content": {PROBLEM_MEDIA_TYPE: entry},
        }
        if status in (429, 503):
            responses[status]["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
            }
    return responses
