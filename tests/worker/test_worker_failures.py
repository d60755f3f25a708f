"""A worker process that dies or overruns mid-job: the job is redelivered or failed, never stuck.

These use the prefork pool (the one deployments run) and a deliberately slow model, so
there is time to catch a job running.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from shared.schemas import JobStatus
from tests.helpers.processes import log_tail
from tests.worker.harness import Harness, started_harness
from tests.worker.onnx_models import publish, slow_model
from tests.worker.payloads import png_bytes, submit_image_job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def slow_registry(root: Path, *, iterations: int) -> Path:
    publish(root, {"m0": lambda p: slow_model(p, iterations=iterations)}, tta=("identity",))
    return root


def wait_running(harness: Harness, job_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while harness.store.get(job_id).status != JobStatus.RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.01)


def test_a_job_whose_worker_process_is_killed_is_answered_by_the_next(
    redis_url: str, tmp_path: Path
) -> None:
    # About two seconds of work per run here: long enough to kill the child mid-job.
    registry = slow_registry(tmp_path / "models", iterations=400_000)
    with started_harness(redis_url, tmp_path, registry, pool="prefork") as (harness, beat):
        child = beat["pid"]
        job = submit_image_job(harness.store, png_bytes())
        harness.send(job.id)
        wait_running(harness, job.id)

        os.kill(child, signal.SIGKILL)  # the OOM killer, say
        done = harness.wait(job.id, timeout_s=90)

    # Acked late and rejected on worker loss: the message went back to the queue, and
    # the replacement child answered it at once, taking over the dead child's lease
    # rather than waiting for it to run out.
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2
    assert f"job:{job.id}: its holder (pid {child}) died; taking it over" in log_tail(
        harness.log_file, 200
    )


def test_a_job_past_the_hard_time_limit_ends_failed(redis_url: str, tmp_path: Path) -> None:
    registry = slow_registry(tmp_path / "models", iterations=5_000_000)
    with started_harness(
        redis_url,
        tmp_path,
        registry,
        pool="prefork",
        task_soft_time_limit_seconds=1,
        task_time_limit_seconds=2,
    ) as (harness, _):
        job = submit_image_job(harness.store, png_bytes())
        harness.send(job.id)
        done = harness.wait(job.id, timeout_s=60)

    assert done.status == JobStatus.FAILED
    assert done.error is not None and "time limit (2 s)" in done.error.detail
