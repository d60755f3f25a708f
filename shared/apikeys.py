"""API keys in Redis: stored hashed, with scopes and an owner; created and revoked by operators.

A key is ``sk_<id>_<secret>``: ``id`` (12 hex digits) names the record
``<prefix>:apikey:<id>`` and is safe to show and log; ``secret`` (32 random bytes,
URL-safe base64) is shown once, at creation, and only its SHA-256 is stored. The
secret has 256 bits of entropy, so a plain hash (no salt, no slow KDF) cannot be
reversed, and checking a request costs one Redis GET and one hash.

Scopes: ``read`` (read one's own jobs and batches), ``submit`` (create and cancel
them), ``admin`` (everything: every owner's jobs, ``/metrics``, worker details in
``/readyz``, model weight downloads). A key acts for its ``owner`` (default: its own
id): keys with the same owner see the same jobs, so a user can hold a ``read`` key
for a dashboard and a ``submit`` key for a pipeline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import redis
from pydantic import BaseModel, Field

from shared.schemas import utcnow

__all__ = ["SCOPES", "ApiKey", "KeyStore", "Scope", "key_id_of"]

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[str, ...] = ("read", "submit", "admin")
_TOKEN = re.compile(r"^sk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


class ApiKey(BaseModel):
    """A stored key: never the secret, only its hash."""

    id: str
    owner: str
    scopes: list[Scope]
    note: str = ""
    created: datetime = Field(default_factory=utcnow)
    sha256: str = Field(description="SHA-256 (hex) of the whole token.")

    def allows(self, scope: Scope) -> bool:
        """Whether this key may act with ``scope`` (``admin`` may do everything)."""
        return "admin" in self.scopes or scope in self.scopes


def key_id_of(token: str) -> str | None:
    """The id part of a well-formed token, else None (safe to log)."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """Create, check, list and revoke API keys under ``<prefix>:apikey:``."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    def create(self, scopes: Iterable[str], *, owner: str | None = None, note: str = "") -> tuple[str, ApiKey]:
        """Make a key; returns ``(token, record)``. The token is not stored anywhere.

        Raises
        ------
        ValueError
            For an unknown scope, no scope, or an owner that is not a short plain name.
        """
        wanted = list(dict.fromkeys(scopes))
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown or not wanted:
            raise ValueError(f"Scopes must be some of {', '.join(SCOPES)}; got {wanted or 'none'}.")
        if owner is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", owner):
            raise ValueError("The owner must be 1-64 letters, digits or _ . @ -.")
        while True:
            key_id = secrets.token_hex(6)
            token = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKey(
                id=key_id, owner=owner or key_id, scopes=wanted, note=note, sha256=_digest(token)  # type: ignore[arg-type]
            )
            if self.redis.set(self._key(key_id), record.model_dump_json(), nx=True):
                return token, record

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None (malformed, unknown, revoked or wrong secret)."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        raw = self.redis.get(self._key(key_id))
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        # Constant-time comparison: the stored hash must not leak through timing.
        return record if hmac.compare_digest(record.sha256, _digest(token)) else None

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        keys = list(self.redis.scan_iter(match=self._key("*"), count=500))
        records = [ApiKey.model_validate(json.loads(v)) for v in self.redis.mget(keys) if v] if keys else []
        return sorted(records, key=lambda k: k.created)

    def revoke(self, key_id: str) -> bool:
        """Delete a key at once; returns False if there was no such key."""
        return bool(self.redis.delete(self._key(key_id)))
