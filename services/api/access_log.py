"""One log line and one latency observation per request, under a request id.

The id comes from the client's ``X-Request-ID`` (if it is a short plain token) or is
made here; it is bound to the log context for everything logged while the request
runs, echoed in the response's ``X-Request-ID``, and so joins the API's log to the
client's. The line names the API key by its public id, never the key itself, and
never the body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from services.api.metrics import REQUEST_SECONDS
from shared.logs import bind, log_context

__all__ = ["AccessLogMiddleware"]

log = logging.getLogger("skyserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AccessLogMiddleware:
    """Pure ASGI: request id in and out, an access log line, the latency histogram."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = bind(request_id=request_id)
        start = time.perf_counter()
        status = 500

        async def tagged(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            REQUEST_SECONDS.labels(
                method=scope["method"], route=getattr(route, "path", "unmatched"), status=str(status)
            ).observe(elapsed)
            state = scope.get("state") or {}
            log.info(
                "%s %s -> %d in %.1f ms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "key_id": state.get("key_id"),
                },
            )
            log_context.reset(token)
