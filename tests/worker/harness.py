"""A real worker process on its own key prefix and queue, and the means to talk to it.

Jobs are created the way the API creates them (a record plus the payload in Redis)
and sent by task name through the broker; tests read the job record back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from shared.jobstore import JobStore
from shared.messages import PREDICT_TASK, PredictMessage
from shared.schemas import TERMINAL_STATUSES, Job, JobStatus
from tests.helpers.processes import log_tail, running_worker, worker_env
from tests.worker.payloads import png_bytes, submit_image_job

__all__ = ["Harness", "started_harness"]


class Harness:
    """One worker serving one registry on one queue, and the means to talk to it."""

    def __init__(self, *, redis_url: str, prefix: str, registry: Path, log_file: Path) -> None:
        self.prefix = prefix
        self.registry = registry
        self.log_file = log_file
        self.redis = redis.Redis.from_url(redis_url)
        self.store = JobStore(self.redis, prefix=prefix, ttl_seconds=600)
        self.client = Celery("skyserve-test-client", broker=redis_url, set_as_current=False)
        self.client.conf.task_serializer = "json"

    def send(self, job_id: str) -> None:
        self.client.send_task(
            PREDICT_TASK, kwargs=PredictMessage(job_id=job_id).model_dump(), queue=self.prefix
        )

    def wait(self, job_id: str, timeout_s: float = 30.0) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.store.get(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"Job {job_id} still {job.status.value}.\n{log_tail(self.log_file)}")
            time.sleep(0.05)

    def drain(self) -> None:
        """Wait until every message sent so far was handled: one worker, one queue, FIFO."""
        sentinel = submit_image_job(self.store, png_bytes(seed=99))
        self.send(sentinel.id)
        assert self.wait(sentinel.id).status == JobStatus.SUCCEEDED

    def close(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=500))
        keys += list(self.redis.scan_iter(match=f"_kombu.binding.{self.prefix}*", count=500))
        if keys:
            self.redis.delete(*keys)
        self.client.close()
        self.redis.close()


@contextmanager
def started_harness(
    redis_url: str,
    tmp: Path,
    registry: Path,
    *,
    pool: str = "solo",
    concurrency: int = 1,
    **extra: str | float,
) -> Iterator[tuple[Harness, dict[str, Any]]]:
    """A worker on a fresh prefix and queue, running until the block ends; its keys are removed."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    harness = Harness(
        redis_url=redis_url, prefix=prefix, registry=registry, log_file=tmp / "worker.log"
    )
    env = worker_env(redis_url=redis_url, key_prefix=prefix, models_dir=registry, **extra)
    try:
        with running_worker(
            env, log_file=harness.log_file, pool=pool, concurrency=concurrency, served="inclination"
        ) as (_, beat):
            yield harness, beat
    finally:
        harness.close()
