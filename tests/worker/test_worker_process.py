"""A real Celery worker process against a real Redis server and a real registry.

Jobs are created the way the API creates them (a record plus the payload in Redis)
and sent by task name through the broker; the tests read the job record back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.preprocessing import preprocess
from shared.registry import Calibration, Manifest
from shared.schemas import JobStatus
from tests.helpers.processes import log_tail
from tests.worker.harness import Harness, started_harness
from tests.worker.onnx_models import expected_regression, member_file, publish, regression_members
from tests.worker.payloads import png_bytes, submit_image_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("registry")
    manifest = publish(root, regression_members(), calibration=Calibration(bias_m=0.1, bias_b=-2.0))
    return root, manifest


@pytest.fixture(scope="module")
def manifest(registry: tuple[Path, Manifest]) -> Manifest:
    return registry[1]


@pytest.fixture(scope="module")
def worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, registry: tuple[Path, Manifest]
) -> Iterator[tuple[Harness, dict[str, Any]]]:
    with started_harness(redis_url, tmp_path_factory.mktemp("worker"), registry[0]) as started:
        yield started


@pytest.fixture
def harness(worker: tuple[Harness, dict[str, Any]]) -> Harness:
    return worker[0]


def test_heartbeat_says_who_serves_what(worker: tuple[Harness, dict[str, Any]]) -> None:
    harness, beat = worker
    assert beat["served"] == {"inclination": 1} and beat["ready"] is True
    assert beat["refused"] == {} and beat["running"] == 0
    assert beat["queue"] == harness.prefix
    assert "CPUExecutionProvider" in beat["providers"]
    assert abs(beat["time"] - time.time()) < 30
    assert any(w["pid"] == beat["pid"] for w in harness.store.workers())


def test_an_image_job_is_answered(harness: Harness, manifest: Manifest) -> None:
    payload = png_bytes(seed=1)
    job = submit_image_job(harness.store, payload)

    harness.send(job.id)
    done = harness.wait(job.id)

    assert done.status == JobStatus.SUCCEEDED, done.error
    assert (done.attempts, done.progress.done) == (1, 1)
    assert done.result is not None and done.result.models == {"inclination": 1}
    answer = done.result.tasks["inclination"]
    _, values = expected_regression(preprocess(payload, manifest.input)[np.newaxis], manifest)
    assert answer.value == pytest.approx(float(np.median(values[:, 0])), rel=1e-5)
    assert [m.value for m in answer.members] == pytest.approx(values[:, 0], rel=1e-5)
    assert answer.tta == ["identity", "rot180"]
    assert done.result.timings_ms["total"] > 0


def test_a_truncated_png_fails_with_a_readable_reason(harness: Harness) -> None:
    payload = png_bytes(seed=2)
    job = submit_image_job(harness.store, payload[: len(payload) // 2])

    harness.send(job.id)
    done = harness.wait(job.id)

    assert done.status == JobStatus.FAILED and done.result is None
    assert done.error is not None and done.error.code == "invalid-image"
    assert "corrupt or truncated" in done.error.detail


def test_a_cancelled_job_is_not_overwritten(harness: Harness) -> None:
    job = submit_image_job(harness.store, png_bytes(seed=3))
    harness.store.cancel(job.id)

    harness.send(job.id)
    harness.drain()

    after = harness.store.get(job.id)
    assert (after.status, after.attempts, after.result) == (JobStatus.CANCELLED, 0, None)


def test_a_redelivered_job_keeps_its_first_answer(harness: Harness) -> None:
    job = submit_image_job(harness.store, png_bytes(seed=4))
    harness.send(job.id)
    first = harness.wait(job.id)

    harness.send(job.id)  # as the broker does after a lost acknowledgement
    harness.drain()

    assert harness.store.get(job.id) == first


def test_a_new_version_is_served_and_a_broken_one_is_not(redis_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    publish(registry, regression_members())
    with started_harness(redis_url, tmp_path, registry, registry_poll_seconds=0) as (harness, _):
        publish(registry, regression_members(3))
        job = submit_image_job(harness.store, png_bytes(seed=5))
        harness.send(job.id)
        assert harness.wait(job.id).result.models == {"inclination": 2}

        broken = publish(registry, regression_members())
        member_file(registry, broken, 0).write_bytes(b"corrupted after publishing")
        job = submit_image_job(harness.store, png_bytes(seed=6))
        harness.send(job.id)
        done = harness.wait(job.id)
        assert done.status == JobStatus.SUCCEEDED and done.result.models == {"inclination": 2}
        assert "inclination v3 cannot be served" in log_tail(harness.log_file, 400)

        pinned = submit_image_job(harness.store, png_bytes(seed=7), versions={"inclination": 1})
        harness.send(pinned.id)
        assert harness.wait(pinned.id).result.models == {"inclination": 1}
