"""API fixtures: an app from the factory against real Redis and a real tiny registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from tests.helpers.tiny_models import publish_tiny_regression


@pytest.fixture
def settings(redis_url: str, key_prefix: str, registry_root: Path) -> ApiSettings:
    publish_tiny_regression(registry_root)
    return ApiSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        celery_queue=key_prefix,
        models_dir=registry_root,
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
        max_wait_seconds=2.0,
    )


@pytest.fixture
def client(settings: ApiSettings) -> Iterator[TestClient]:
    # As a context manager, so the lifespan opens Redis and the registry.
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
