"""The worker's /metrics: a real prefork worker (two pool processes) serving
multiprocess metrics from its main process, scraped after real jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.local_stack import free_port
from shared.registry import Calibration
from shared.schemas import JobStatus
from tests.worker.harness import Harness, started_harness
from tests.worker.onnx_models import publish, regression_members
from tests.worker.payloads import png_bytes, submit_image_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, int]]:
    root = tmp_path_factory.mktemp("registry")
    publish(root, regression_members(), calibration=Calibration(bias_m=0.1, bias_b=-2.0))
    port = free_port()
    with started_harness(
        redis_url, tmp_path_factory.mktemp("worker"), root,
        pool="prefork", concurrency=2, worker_metrics_port=port,
    ) as (harness, _):
        yield harness, port


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_scraped_after_real_jobs_the_counters_moved(worker: tuple[Harness, int]) -> None:
    harness, port = worker
    before = _samples(port)
    jobs = [submit_image_job(harness.store, png_bytes(seed=k)) for k in range(4)]
    for job in jobs:
        harness.send(job.id)
    bad = submit_image_job(harness.store, b"not an image at all")
    harness.send(bad.id)
    assert all(harness.wait(job.id).status == JobStatus.SUCCEEDED for job in jobs)
    assert harness.wait(bad.id).status == JobStatus.FAILED
    after = _samples(port)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # Counted across both pool processes by the main process's one endpoint.
    assert moved("skyserve_worker_jobs_total", kind="job", outcome="succeeded") == 4
    assert moved("skyserve_worker_jobs_total", kind="job", outcome="failed") == 1
    assert moved("skyserve_worker_images_total", task="inclination") == 4
    for stage in ("fetch", "decode", "inference", "write"):
        assert moved("skyserve_worker_stage_seconds_count", stage=stage) == 4, stage
        assert moved("skyserve_worker_stage_seconds_sum", stage=stage) > 0, stage
    assert moved("skyserve_worker_task_seconds_count", kind="job") == 5
    assert _value(after, "skyserve_worker_jobs_running", kind="job") == 0
