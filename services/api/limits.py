"""Limits that keep one client from taking the service: rate, unfinished jobs, body size, time.

- :class:`RateLimiter`: requests per key per minute, a fixed window counted in Redis
  (``INCR`` + ``EXPIRE`` in one Lua call, so every API process shares the count).
  A fixed window lets a key burst up to twice the limit across a minute boundary;
  that is the price of one round trip per request, and fine for a fairness limit.
- :class:`ActiveJobs`: unfinished jobs plus batches per key, a Redis set pruned of
  finished ones on each submission.
- :class:`BodyLimitMiddleware`: request bodies are counted *as they stream*, so a
  chunked upload (no ``Content-Length``) stops at the limit like a declared one.
- :class:`TimeoutMiddleware`: a request that has not begun its answer in
  ``request_timeout_seconds`` is cancelled and answered ``503``.

All refusals are problem documents; ``429`` and ``503`` carry ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import anyio
import redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RateLimited, RequestTimeout, RequestTooLarge, SkyserveError, TooManyJobs
from shared.schemas import TERMINAL_STATUSES

__all__ = ["RateLimiter", "ActiveJobs", "BodyLimitMiddleware", "TimeoutMiddleware", "body_limit"]

_WINDOW_S = 60
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
#: Multipart framing around an upload: boundaries, part headers, the small form fields.
MULTIPART_OVERHEAD = 64 * 1024


class RateLimiter:
    """At most ``per_minute`` requests per key in each clock minute (0 = unlimited)."""

    def __init__(self, client: redis.Redis, *, prefix: str, per_minute: int) -> None:
        self.prefix = prefix
        self.per_minute = per_minute
        self._hit = client.register_script(_HIT)

    def hit(self, key_id: str) -> None:
        """Count one request.

        Raises
        ------
        RateLimited
            Past the limit; ``retry_after`` is the time to the next window.
        """
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // _WINDOW_S)
        count = int(self._hit(keys=[f"{self.prefix}:rate:{key_id}:{window}"], args=[_WINDOW_S + 5]))
        if count > self.per_minute:
            retry = max(1, math.ceil((window + 1) * _WINDOW_S - now))
            raise RateLimited(
                f"The key {key_id} made more than {self.per_minute} requests this minute; "
                f"wait {retry} s. Poll with ?wait= instead of in a tight loop.",
                retry_after=retry,
                limit_per_minute=self.per_minute,
            )


class ActiveJobs:
    """The unfinished jobs and batches of each key, to cap them (0 = unlimited)."""

    def __init__(self, client: redis.Redis, *, prefix: str, limit: int, ttl_seconds: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.limit = limit
        self.ttl = ttl_seconds

    def _set(self, key_id: str) -> str:
        return f"{self.prefix}:active:{key_id}"

    def _record_key(self, member: str) -> str:
        kind, _, item_id = member.partition(":")
        return f"{self.prefix}:{kind}:{item_id}"

    def check(self, key_id: str) -> None:
        """Drop finished entries; refuse if the key is at its limit.

        Raises
        ------
        TooManyJobs
            ``limit`` jobs and batches of this key are still queued or running.
        """
        if self.limit <= 0:
            return
        members = [m.decode() for m in self.redis.smembers(self._set(key_id))]
        if len(members) < self.limit:
            return
        records = self.redis.mget([self._record_key(m) for m in members])
        done = [m for m, raw in zip(members, records, strict=True) if _finished(raw)]
        if done:
            self.redis.srem(self._set(key_id), *done)
        if len(members) - len(done) >= self.limit:
            raise TooManyJobs(
                f"The key {key_id} has {self.limit} jobs and batches still queued or running, "
                "its limit. Wait for some to finish (or cancel them), then submit again.",
                retry_after=5,
                limit=self.limit,
            )

    def add(self, key_id: str, kind: str, item_id: str) -> None:
        """Count a new job or batch of this key."""
        with self.redis.pipeline() as pipe:
            self.add_commands(pipe, key_id, kind, item_id)
            pipe.execute()

    def add_commands(
        self, pipe: redis.client.Pipeline, key_id: str, kind: str, item_id: str, *, undo: bool = False
    ) -> None:
        """Add :meth:`add`'s writes (or, with ``undo``, the removal) to ``pipe``, so a job is
        counted in the transaction that stores it."""
        if self.limit <= 0:
            return
        if undo:
            pipe.srem(self._set(key_id), f"{kind}:{item_id}")
            return
        pipe.sadd(self._set(key_id), f"{kind}:{item_id}")
        pipe.expire(self._set(key_id), self.ttl)


def _finished(raw: bytes | None) -> bool:
    if raw is None:
        return True  # expired or never stored
    try:
        return json.loads(raw).get("status") in TERMINAL_STATUSES
    except (ValueError, AttributeError):
        return True


def body_limit(settings: Any, method: str, path: str, content_type: str) -> int:
    """The largest body a request may send, by route and content type."""
    if method == "POST" and path.endswith("/v1/jobs"):
        if content_type.startswith("multipart/"):
            return int(settings.max_upload_bytes) + MULTIPART_OVERHEAD
        return int(settings.max_json_body_bytes)
    if method == "POST" and path.endswith("/v1/batches"):
        return int(settings.max_batch_bytes) + MULTIPART_OVERHEAD
    return int(settings.max_json_body_bytes)


async def _send_problem(send: Send, error: SkyserveError, path: str) -> None:
    from services.api.problems import PROBLEM_MEDIA_TYPE, problem_headers

    body = json.dumps(error.to_problem(instance=path)).encode()
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem_headers(error).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse bodies past the route's limit, declared or counted while they stream."""

    def __init__(self, app: ASGIApp, settings: Any) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = body_limit(
            self.settings, scope["method"], scope["path"], headers.get("content-type", "").lower()
        )
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = RequestTooLarge(
                f"The request body is {declared} bytes; this call takes at most {limit:,}.",
                max_bytes=limit,
            )
            await _send_problem(send, error, scope["path"])
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the handler's read: the problem handlers answer 413.
                    raise RequestTooLarge(
                        f"The request body passed {limit:,} bytes, the most this call takes.",
                        max_bytes=limit,
                    )
            return message

        await self.app(scope, counted, send)


class TimeoutMiddleware:
    """Cancel a request that has not started its answer within ``timeout_s``."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        with anyio.CancelScope(deadline=anyio.current_time() + self.timeout_s) as cancel:

            async def watched(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    # Once an answer has begun (a long CSV stream), it may take its time.
                    cancel.deadline = math.inf
                await send(message)

            await self.app(scope, receive, watched)
        if cancel.cancelled_caught and not started:
            error = RequestTimeout(
                f"The request did not finish within {self.timeout_s:g} s and was stopped. "
                "Try again; send large catalogs in parts.",
                retry_after=5,
            )
            await _send_problem(send, error, scope["path"])
