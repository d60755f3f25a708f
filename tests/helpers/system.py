"""The whole system for integration tests: real Redis, real Celery worker process(es),
the real API, a tiny real ONNX registry, and a local HTTP server standing in for the
cutout service.

``running_system(redis_url, tmp)`` starts a key prefix and queue, the registry, the
stand-in and a worker whose cutout settings point at the stand-in (tiny timeouts and
retries, so failures are quick), and yields a :class:`System`; a test module wraps it
in a module-scoped fixture. ``System.api()`` gives the API (``create_app`` in a
``TestClient``) on the same prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.batchstore import BatchStore
from shared.messages import PREDICT_CHUNK_TASK, ChunkMessage
from tests.helpers.cutout_server import CutoutStandIn, running_stand_in
from tests.helpers.images import png_bytes
from tests.helpers.live_server import unused_url
from tests.helpers.processes import log_tail, running_worker, worker_env
from tests.helpers.tiny_models import publish_tiny_regression

__all__ = ["System", "running_system", "worker_settings"]

TERMINAL = ("succeeded", "failed", "cancelled")


def worker_settings(stand_in: CutoutStandIn, *also_allowed: str, **extra: Any) -> dict[str, Any]:
    """``SKYSERVE_*`` worker settings that fetch cutouts from the stand-in, quickly."""
    hosts = ",".join([stand_in.netloc, *also_allowed])
    return {
        **stand_in.worker_env(),
        "cutout_allowed_hosts": hosts,
        "cutout_timeout_seconds": 1.0,
        "cutout_retries": 1,
        "cutout_backoff_seconds": 0.05,
        "cutout_pixels": 64,
        **extra,
    }


@dataclass
class System:
    """A running system on one prefix: what the tests talk to."""

    redis_url: str
    prefix: str
    registry: Path
    stand_in: CutoutStandIn
    dead_url: str
    worker_log: Path
    api_settings: ApiSettings
    redis: redis.Redis = field(init=False)
    celery: Celery = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)
        self.celery = Celery("skyserve-test-client", broker=self.redis_url, set_as_current=False)
        self.celery.conf.task_serializer = "json"

    @property
    def batches(self) -> BatchStore:
        return BatchStore(self.redis, prefix=self.prefix, ttl_seconds=3600)

    @contextmanager
    def api(self, **overrides: Any) -> Iterator[TestClient]:
        """The real API on this prefix (settings overridden as given)."""
        settings = self.api_settings.model_copy(update=overrides)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client

    def send_chunk(self, batch_id: str, chunk: int) -> None:
        """Send a chunk message by task name, as the API does (a redelivery, in tests)."""
        self.celery.send_task(
            PREDICT_CHUNK_TASK,
            kwargs=ChunkMessage(batch_id=batch_id, chunk=chunk).model_dump(),
            queue=self.prefix,
        )

    def wait_job(self, api: TestClient, job_id: str, *, timeout_s: float = 60.0) -> dict:
        """Poll a job until it ends; fail with the worker log otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = api.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"Job {job_id} still {job['status']}.\n{log_tail(self.worker_log)}")

    def wait_batch(self, api: TestClient, batch_id: str, *, timeout_s: float = 120.0) -> dict:
        """Poll a batch until it ends; fail with the worker log otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            batch = api.get(f"/v1/batches/{batch_id}").json()
            if batch["status"] in TERMINAL:
                return batch
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Batch {batch_id} still {batch['status']}: {batch['progress']}\n"
                    f"{log_tail(self.worker_log)}"
                )
            time.sleep(0.1)

    def drain(self, api: TestClient) -> None:
        """Wait until a single solo worker has handled every message queued so far.

        The queue is FIFO and such a worker takes one message at a time, so once a
        job sent now is answered, everything sent before it has been handled.
        """
        resp = api.post(
            "/v1/jobs", files={"file": ("sentinel.png", png_bytes(seed=5), "image/png")}
        )
        assert resp.status_code == 202, resp.text
        assert self.wait_job(api, resp.json()["id"])["status"] == "succeeded"

    def close(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=500))
        keys += list(self.redis.scan_iter(match=f"_kombu.binding.{self.prefix}*", count=500))
        if keys:
            self.redis.delete(*keys)
        self.celery.close()
        self.redis.close()


@contextmanager
def running_system(
    redis_url: str,
    tmp: Path,
    *,
    worker: dict[str, Any] | None = None,
    pool: str = "solo",
    concurrency: int = 1,
    api: dict[str, Any] | None = None,
) -> Iterator[System]:
    """Start the registry, the cutout stand-in and a worker on a fresh prefix.

    Parameters
    ----------
    worker
        ``SKYSERVE_*`` settings of the worker, on top of :func:`worker_settings`
        (which allowlists the stand-in and an unreachable address, ``System.dead_url``).
    pool, concurrency
        The worker's Celery pool.
    api
        ``ApiSettings`` fields on top of the defaults (32-row chunks, 10 s waits).
    """
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    registry = tmp / "models"
    registry.mkdir()
    publish_tiny_regression(registry)
    dead_url = unused_url()
    api_settings = ApiSettings(
        **{
            "redis_url": redis_url,
            "key_prefix": prefix,
            "celery_queue": prefix,
            "models_dir": registry,
            "max_wait_seconds": 10.0,
            "batch_chunk_rows": 32,
            **(api or {}),
        }
    )
    with running_stand_in() as stand_in:
        system = System(
            redis_url=redis_url,
            prefix=prefix,
            registry=registry,
            stand_in=stand_in,
            dead_url=dead_url,
            worker_log=tmp / "worker.log",
            api_settings=api_settings,
        )
        settings = worker_settings(stand_in, dead_url.removeprefix("http://"), **(worker or {}))
        env = worker_env(redis_url=redis_url, key_prefix=prefix, models_dir=registry, **settings)
        try:
            with running_worker(
                env,
                log_file=system.worker_log,
                pool=pool,
                concurrency=concurrency,
                served="inclination",
            ):
                yield system
        finally:
            system.close()
