"""Client fixtures: the real API over real HTTP (real Redis, tiny real registry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.api.settings import ApiSettings
from tests.client.stand_in import StandInWorker
from tests.helpers.live_server import live_api  # noqa: F401  (registers the fixture)
from tests.helpers.tiny_models import publish_tiny_regression


@pytest.fixture(autouse=True)
def _no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SKYSERVE_URL or SKYSERVE_API_KEY must not leak into the tests."""
    for name in ("SKYSERVE_URL", "SKYSERVE_API_KEY", "SKYSERVE_CLIENT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


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
def worker(settings: ApiSettings) -> Iterator[StandInWorker]:
    """Finishes every job and batch of this test a moment after it is queued."""
    with StandInWorker(settings) as stand_in:
        yield stand_in
