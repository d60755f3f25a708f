"""Workers killed or stopped in the middle of a micro-batch (threads pool): every job of
the micro-batch completes exactly once (the test leases last 3 s, the broker's
visibility timeout stays at 600 s, so recovery within these timeouts is the leases').

Real Redis, the real API, real Celery worker processes started and killed here, and a
deliberately slow real ONNX model (about two seconds per run, whatever the batch size)
so there is time to catch a micro-batch running.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from shared.leases import job_unit
from shared.messages import PREDICT_TASK, PredictMessage
from shared.schemas import TERMINAL_STATUSES, Job
from tests.helpers.faults import Cluster, kill_tree, process_tree, running_cluster, wait_until
from tests.helpers.images import png_bytes
from tests.worker.onnx_models import publish, slow_iterations, slow_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

JOBS = 6
THREADS = {"pool": "threads", "concurrency": 8, "microbatch_max_size": 8}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-models")
    steps = slow_iterations(2.0, at_least=400_000)  # ~2 s a run, here and now
    publish(root, {"m0": lambda p: slow_model(p, iterations=steps)}, tta=("identity",))
    return root


def submit_jobs(api, count: int = JOBS) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for k in range(count):
        resp = api.post("/v1/jobs", files={"file": ("g.png", png_bytes(24, seed=k), "image/png")})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    return ids


def micro_batch_running(cluster: Cluster, name: str) -> dict[str, Any]:
    """Wait until worker ``name``'s heartbeat shows a run of two or more jobs going on."""
    pids = set(process_tree(cluster.workers[name].pid))

    def running() -> dict[str, Any] | None:
        for beat in cluster.jobs.workers():
            if beat.get("pid") in pids and beat.get("microbatches", {}).get("in_run", 0) >= 2:
                return beat["microbatches"]
        return None

    return wait_until(running, timeout_s=60, what="a micro-batch running", log=cluster.log(name))


def wait_jobs(cluster: Cluster, ids: list[str], timeout_s: float = 120) -> list[Job]:
    def ended() -> list[Job] | None:
        jobs = [cluster.jobs.get(i) for i in ids]
        return jobs if all(j.status in TERMINAL_STATUSES for j in jobs) else None

    deadline = time.monotonic() + timeout_s
    while (jobs := ended()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"jobs did not end\n{cluster.logs_text()}")
        time.sleep(0.1)
    return jobs


def test_a_whole_worker_killed_mid_micro_batch_loses_no_job(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1", **THREADS)
        ids = submit_jobs(api)
        running = micro_batch_running(cluster, "w1")
        held = [i for i in ids if cluster.leases.holder(job_unit(i)) is not None]
        kill_tree(cluster.workers["w1"])  # mid-run: nothing of it was stored or acknowledged
        killed = time.monotonic()
        cluster.start("w2", **THREADS)

        jobs = wait_jobs(cluster, ids)
        recovered = time.monotonic() - killed

        line = (
            f"SIGKILL of a threads-pool worker mid-micro-batch (a run of {running['in_run']}): "
            f"{len(ids)} jobs accepted, {sum(j.status.value == 'succeeded' for j in jobs)} "
            f"succeeded, {len(held)} stranded, all ended {recovered:.1f} s after the kill"
        )
        record_property("fault", line)
        print(line)
        assert all(j.status.value == "succeeded" and j.result is not None for j in jobs), [
            (j.status, j.error) for j in jobs
        ]
        # Stranded jobs ran a second time, after their leases ran out: the sweeper sent them.
        assert len(held) >= 2
        assert all(cluster.jobs.get(i).attempts == 2 for i in held)
        assert "Re-enqueued job:" in cluster.log("w2").read_text()
        assert cluster.leases.units() == {}

        # The broker's own redelivery of w1's unacknowledged messages (after its
        # visibility timeout) finds each job ended: the answers stay as they are.
        first = {j.id: j for j in jobs}
        for i in ids:
            cluster_send(cluster, i)
        time.sleep(1.5)
        assert {i: cluster.jobs.get(i) for i in ids} == first


def cluster_send(cluster: Cluster, job_id: str) -> None:
    """Send a predict message for ``job_id``, as the broker redelivers one."""
    client = Celery("skyserve-test-client", broker=cluster.redis_url, set_as_current=False)
    client.conf.task_serializer = "json"
    try:
        client.send_task(
            PREDICT_TASK, kwargs=PredictMessage(job_id=job_id).model_dump(), queue=cluster.prefix
        )
    finally:
        client.close()


def test_a_worker_stopped_with_sigterm_mid_micro_batch_answers_it_first(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1", **THREADS)
        w1 = cluster.workers["w1"]
        ids = submit_jobs(api)
        running = micro_batch_running(cluster, "w1")

        w1.send_signal(signal.SIGTERM)  # warm shutdown, as `docker compose stop` does
        stopped = time.monotonic()
        assert w1.wait(90) == 0
        took = time.monotonic() - stopped
        jobs = [cluster.jobs.get(i) for i in ids]

        line = (
            f"SIGTERM of a threads-pool worker mid-micro-batch (a run of {running['in_run']}): "
            f"{sum(j.status.value == 'succeeded' for j in jobs)} of {len(ids)} jobs answered "
            f"before it exited ({took:.1f} s)"
        )
        record_property("fault", line)
        print(line)
        # Every job this worker had started was answered, once, before it left.
        assert all(j.status.value == "succeeded" and j.attempts == 1 for j in jobs), [
            (j.status, j.attempts) for j in jobs
        ]
