"""Micro-batching in a real worker process (threads pool) fed by a real broker.

The registry's ensemble has a deliberately slow member (a Loop, about half a second per
run whatever the batch size) next to an image-dependent one: while the first job of a
burst runs, the others arrive and wait for the next run, so a burst of N jobs takes
fewer than N runs, which the worker's heartbeat counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.schemas import Job, JobStatus
from tests.helpers.processes import log_tail
from tests.worker.harness import Harness, started_harness
from tests.worker.onnx_models import publish, ramp_weights, slow_model, weighted_tanh_model
from tests.worker.payloads import png_bytes, submit_image_job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

BURST = 8


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("microbatch-models")
    publish(
        root,
        {
            "slow": lambda p: slow_model(p, iterations=100_000),
            "ramp": lambda p: weighted_tanh_model(p, weights=ramp_weights(4.0), bias=0.2),
        },
    )
    return root


@pytest.fixture(scope="module")
def worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, registry: Path
) -> Iterator[Harness]:
    with started_harness(
        redis_url,
        tmp_path_factory.mktemp("worker"),
        registry,
        pool="threads",
        concurrency=16,
        microbatch_max_size=16,
        microbatch_max_wait_ms=3,
    ) as (harness, _):
        yield harness


def figures(harness: Harness) -> dict[str, Any]:
    """The worker's micro-batch figures from its latest heartbeat."""
    (beat,) = harness.store.workers()
    return beat["microbatches"]


def figures_once(harness: Harness, images: int) -> dict[str, Any]:
    """The figures as soon as the heartbeat counts ``images`` images answered."""
    deadline = time.monotonic() + 20
    while (now := figures(harness))["images"] < images:
        if time.monotonic() > deadline:
            pytest.fail(f"heartbeat still says {now}\n{log_tail(harness.log_file)}")
        time.sleep(0.1)
    return now


def numbers(job: Job) -> list[float]:
    answer = job.result.tasks["inclination"]
    return [answer.value, *(m.value for m in answer.members)]


def test_a_burst_is_answered_in_fewer_runs_each_job_as_alone_and_a_bad_image_fails_alone(
    worker: Harness,
) -> None:
    harness = worker
    before = figures(harness)
    payloads = [png_bytes(width=16, height=12, seed=100 + k) for k in range(BURST)]
    corrupt = png_bytes(seed=7)[:70]
    jobs = [submit_image_job(harness.store, p) for p in payloads]
    bad = submit_image_job(harness.store, corrupt)
    for job in [*jobs[:3], bad, *jobs[3:]]:
        harness.send(job.id)

    together = [harness.wait(job.id, timeout_s=60) for job in jobs]
    failed = harness.wait(bad.id)

    assert all(job.status == JobStatus.SUCCEEDED for job in together), [
        (j.status, j.error) for j in together
    ]
    assert failed.status == JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "invalid-image" and "corrupt or truncated" in failed.error.detail
    burst = figures_once(harness, before["images"] + BURST)
    runs = burst["runs"] - before["runs"]
    assert runs < BURST, burst
    assert burst["largest"] >= 2

    # The same images, one job at a time: each is its own run and answers the same.
    for payload, first in zip(payloads, together, strict=True):
        job = submit_image_job(harness.store, payload)
        harness.send(job.id)
        again = harness.wait(job.id)
        assert again.status == JobStatus.SUCCEEDED
        assert numbers(again) == pytest.approx(numbers(first), abs=1e-6)
    after = figures_once(harness, burst["images"] + BURST)
    assert after["runs"] - burst["runs"] == BURST
    print(f"\n{BURST} concurrent jobs: {runs} ensemble run(s); one at a time: {BURST} runs")
