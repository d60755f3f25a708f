"""Who is calling: API keys, scopes, and which jobs and batches a caller may see.

Policy (``SKYSERVE_AUTH_MODE``):

- ``open`` (``make run`` on loopback): no keys; every caller is the same anonymous
  operator and sees everything. The API logs at start-up that it runs open.
- ``keys`` (the compose deployment): ``Authorization: Bearer <key>`` on every job and
  batch call. ``submit`` creates and cancels, ``read`` reads; a key sees only its
  owner's jobs and batches (another owner's answer ``404``, exactly like a job that
  does not exist, so ids cannot be probed). ``admin`` sees every owner's, and alone
  may read ``/metrics``, the worker details of ``/readyz`` and download model
  weights (``.onnx``). The catalogue (``/v1/tasks``, model cards and their plots),
  ``/healthz``, the ready/not-ready answer of ``/readyz``, the docs and the web page
  stay public: they hold nothing private.

Each keyed request also counts against the key's rate limit
(:mod:`services.api.limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
import redis
from fastapi import Depends, Request

from services.api.limits import RateLimiter
from shared.apikeys import ApiKey, KeyStore, Scope
from shared.errors import Forbidden, JobNotFound, Unauthenticated

__all__ = [
    "Caller",
    "OPEN_CALLER",
    "require",
    "optional_caller",
    "ReadCaller",
    "SubmitCaller",
    "AdminCaller",
    "AnyCaller",
    "claim",
    "owner_commands",
    "check_owner",
]

Kind = Literal["job", "batch"]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: its key, or None in open mode (the local operator)."""

    key: ApiKey | None

    @property
    def open(self) -> bool:
        return self.key is None

    @property
    def owner(self) -> str | None:
        """Whose jobs these are; None in open mode (nobody's in particular)."""
        return self.key.owner if self.key else None

    @property
    def admin(self) -> bool:
        """Open mode, or a key with the ``admin`` scope: sees everything."""
        return self.key is None or "admin" in self.key.scopes

    def idempotency_scope(self, key: str | None) -> str | None:
        """An Idempotency-Key namespaced by owner, so two owners' keys never collide."""
        if key is None or self.owner is None:
            return key
        return f"{self.owner}:{key}"


OPEN_CALLER = Caller(key=None)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _authenticate(request: Request, scope: Scope | None) -> Caller:
    settings = request.app.state.settings
    if settings.auth_mode == "open":
        return OPEN_CALLER
    token = _bearer(request)
    if token is None:
        if scope is None:
            return _ANONYMOUS
        raise Unauthenticated(
            "This skyserve needs an API key: send 'Authorization: Bearer <key>' (the "
            "skyserve CLI and Python client read SKYSERVE_API_KEY). Ask the operator for "
            "a key; they make one with 'skyserve-admin keys create'."
        )
    keys: KeyStore = request.app.state.keys
    key = await anyio.to_thread.run_sync(keys.verify, token)
    if key is None:
        raise Unauthenticated(
            "The API key is not valid: it is malformed, unknown or revoked. Check "
            "SKYSERVE_API_KEY, or ask the operator for a new key."
        )
    if scope is not None and not key.allows(scope):
        raise Forbidden(
            f"The key {key.id} has the scopes {', '.join(key.scopes)}; this call needs "
            f"'{scope}'. Ask the operator for a key with it.",
            key_id=key.id,
            needed_scope=scope,
        )
    limiter: RateLimiter = request.app.state.rate_limiter
    await anyio.to_thread.run_sync(limiter.hit, key.id)
    request.state.key_id = key.id  # for the access log: the id, never the secret
    return Caller(key=key)


#: In keys mode, a public route called without a key: nobody, no privileges.
_ANONYMOUS = Caller(
    key=ApiKey(id="anonymous", owner="\0anonymous", scopes=["read"], sha256="-")
)


def require(scope: Scope) -> object:
    """A dependency that authenticates the request and checks it may use ``scope``."""

    async def dependency(request: Request) -> Caller:
        return await _authenticate(request, scope)

    return Depends(dependency)


async def optional_caller(request: Request) -> Caller:
    """The caller if it sent a valid key, else an anonymous one (for public routes)."""
    return await _authenticate(request, None)


ReadCaller = Annotated[Caller, require("read")]
SubmitCaller = Annotated[Caller, require("submit")]
AdminCaller = Annotated[Caller, require("admin")]
AnyCaller = Annotated[Caller, Depends(optional_caller)]


def _owner_key(prefix: str, kind: Kind, item_id: str) -> str:
    return f"{prefix}:owner:{kind}:{item_id}"


def claim(request: Request, caller: Caller, kind: Kind, item_id: str, ttl_seconds: int) -> None:
    """Record that ``caller``'s owner owns a job or batch (before it is created)."""
    if caller.owner is None:
        return
    store = request.app.state.store
    store.redis.set(_owner_key(store.prefix, kind, item_id), caller.owner, ex=ttl_seconds)


def owner_commands(
    pipe: redis.client.Pipeline, request: Request, caller: Caller, kind: Kind, item_id: str,
    ttl_seconds: int, *, undo: bool = False,
) -> None:
    """Add :func:`claim`'s write (or, with ``undo``, its removal) to ``pipe``: the owner is
    then recorded in the same transaction that stores the job."""
    if caller.owner is None:
        return
    key = _owner_key(request.app.state.store.prefix, kind, item_id)
    if undo:
        pipe.delete(key)
    else:
        pipe.set(key, caller.owner, ex=ttl_seconds)


def check_owner(request: Request, caller: Caller, kind: Kind, item_id: str) -> None:
    """Raise 404 unless the caller may see this job or batch.

    Raises
    ------
    JobNotFound
        Another owner's (or an unowned) job or batch, worded as for a missing one.
    """
    if caller.admin:
        return
    store = request.app.state.store
    owner = store.redis.get(_owner_key(store.prefix, kind, item_id))
    if owner is None or owner.decode() != caller.owner:
        raise JobNotFound(f"There is no {kind} {item_id!r} (it may have expired).")
