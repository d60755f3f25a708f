"""Workers killed and stopped mid-batch, with a second worker alive: every accepted row
completes exactly once, progress is exact, and stranded work recovers in seconds (the
test leases last 3 s; the broker's visibility timeout stays at its 600 s default, so a
recovery inside these tests' timeouts is the lease's doing).

Real Redis, real Celery worker processes started and killed here, a deliberately slow
real ONNX model (about two seconds per chunk) so there is time to catch work running.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from services.api.app import create_app
from shared.leases import job_unit
from tests.helpers.faults import (
    Cluster,
    Figures,
    audit_batch,
    kill_tree,
    process_tree,
    running_cluster,
    wait_until,
    zip_of_images,
)
from tests.helpers.images import png_bytes
from tests.helpers.live_server import serve
from tests.worker.onnx_models import publish, slow_iterations, slow_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

ROWS = 24  # 6 chunks of 4


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-models")
    steps = slow_iterations(2.0, at_least=400_000)  # ~2 s a run, here and now
    publish(root, {"m0": lambda p: slow_model(p, iterations=steps)}, tta=("identity",))
    return root


def submit_batch(api, rows: int = ROWS) -> str:  # type: ignore[no-untyped-def]
    resp = api.post(
        "/v1/batches",
        files={"file": ("set.zip", zip_of_images(rows), "application/zip")},
        data={"tasks": "inclination"},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def wait_batch(cluster: Cluster, api, batch_id: str, timeout_s: float = 150) -> dict:  # type: ignore[no-untyped-def]
    def ended() -> dict | None:
        batch = api.get(f"/v1/batches/{batch_id}").json()
        return batch if batch["status"] in ("succeeded", "failed", "cancelled") else None

    deadline = time.monotonic() + timeout_s
    while (batch := ended()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} did not end\n{cluster.logs_text()}")
        time.sleep(0.1)
    return batch


def chunk_held_by(
    cluster: Cluster, batch_id: str, pids: Callable[[], list[int]]
) -> tuple[int, int]:
    """Wait until a process among ``pids()`` holds a lease on a chunk; (chunk, pid)."""

    def held() -> tuple[int, int] | None:
        ours = set(pids())
        for unit, pid in cluster.holders().items():
            if unit.startswith(f"chunk:{batch_id}:") and pid in ours:
                return int(unit.rsplit(":", 1)[1]), pid
        return None

    return wait_until(held, timeout_s=60, what="a chunk running on the worker")


def watch_recovery(
    cluster: Cluster, batch_id: str, chunks: list[int], dead: set[int]
) -> tuple[float, float]:
    """Seconds until every stranded chunk ran again (a live process held its lease, or it
    was recorded) and until every one was recorded, from now (just after the kill)."""
    start = time.monotonic()
    restarted: float | None = None
    units = {f"chunk:{batch_id}:{k}": k for k in chunks}
    deadline = start + 120
    while True:
        holders = cluster.holders()
        recorded = {k for k in chunks if cluster.batches.has_result(batch_id, k)}
        running = {k for u, k in units.items() if holders.get(u) not in (None, *dead)}
        if restarted is None and recorded | running == set(chunks):
            restarted = time.monotonic() - start
        if recorded == set(chunks):
            return restarted or 0.0, time.monotonic() - start
        if time.monotonic() > deadline:
            pytest.fail(f"chunks {chunks} were not recorded\n{cluster.logs_text()}")
        time.sleep(0.05)


def report(record_property, figures: Figures) -> None:  # type: ignore[no-untyped-def]
    record_property("fault", figures.line())
    print(figures.line())


def assert_exactly_once(figures: Figures) -> None:
    assert (figures.lost, figures.counted_twice) == (0, 0), figures
    assert figures.completed == figures.accepted and figures.failed == 0, figures


def test_a_killed_prefork_child_is_replaced_and_its_chunk_taken_over(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1")
        cluster.start("w2")
        w1 = cluster.workers["w1"]
        batch_id = submit_batch(api)
        chunk, child = chunk_held_by(cluster, batch_id, lambda: process_tree(w1.pid)[1:])

        os.kill(child, signal.SIGKILL)  # the OOM killer, say
        restarted, recorded = watch_recovery(cluster, batch_id, [chunk], {child})
        batch = wait_batch(cluster, api, batch_id)
        figures = audit_batch(api, batch_id, "SIGKILL of a prefork child mid-batch", restarted)
        report(record_property, figures)
        record_property(
            "fault", f"  (the killed chunk was recorded {recorded:.1f} s after the kill)"
        )

        assert batch["status"] == "succeeded"
        assert_exactly_once(figures)
        # The worker's main process handed the message back at once, to the end of the
        # queue. Whoever reached the chunk first ran it: the requeued message (taking the
        # lease over from the dead pid, or after it ran out), or the sweeper's copy. The
        # immediate takeover alone is checked in tests/worker/test_worker_failures.py.
        logs = "".join(cluster.log(n).read_text() for n in cluster.workers)
        path = (
            "took the lease over from the dead pid"
            if "died; taking it over" in logs
            else "re-enqueued by the sweeper"
            if "Re-enqueued chunk:" in logs
            else "requeued message ran after the lease ran out"
        )
        record_property("fault", f"  (recovered by: {path})")
        assert w1.poll() is None  # the worker itself lives on with a new child


def test_a_whole_worker_killed_mid_batch_is_recovered_by_its_leases(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1", concurrency=2)
        cluster.start("w2")
        w1 = cluster.workers["w1"]
        batch_id = submit_batch(api)
        pids = set(process_tree(w1.pid))

        def both_busy() -> list[str]:
            held = [u for u, pid in cluster.holders().items() if pid in pids]
            return held if len(held) == 2 else []

        stranded = wait_until(both_busy, timeout_s=60, what="a chunk on each of its 2 processes")
        kill_tree(w1)  # main process and children at once: a lost machine
        chunks = [int(u.rsplit(":", 1)[1]) for u in stranded if u.startswith("chunk:")]
        restarted, recorded = watch_recovery(cluster, batch_id, chunks, pids)
        batch = wait_batch(cluster, api, batch_id)
        figures = audit_batch(
            api,
            batch_id,
            f"SIGKILL of a whole worker mid-batch ({len(chunks)} chunk(s) stranded)",
            restarted,
        )
        report(record_property, figures)
        record_property("fault", f"  (stranded chunks recorded {recorded:.1f} s after the kill)")

        assert batch["status"] == "succeeded"
        assert_exactly_once(figures)
        # Not the broker's visibility timeout (600 s): the sweeper re-enqueued them.
        assert "Re-enqueued chunk:" in cluster.log("w2").read_text()
        assert cluster.leases.units() == {}


def test_a_worker_stopped_with_sigterm_finishes_its_chunk_first(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1")
        cluster.start("w2")
        w1 = cluster.workers["w1"]
        batch_id = submit_batch(api)
        chunk, _ = chunk_held_by(cluster, batch_id, lambda: process_tree(w1.pid))

        w1.send_signal(signal.SIGTERM)  # warm shutdown, as `docker compose stop` does
        stopped = time.monotonic()
        assert w1.wait(90) == 0
        finished = time.monotonic() - stopped
        # Its running chunk was finished before it left, not abandoned to a lease.
        assert cluster.batches.has_result(batch_id, chunk)
        batch = wait_batch(cluster, api, batch_id)
        figures = audit_batch(api, batch_id, "SIGTERM of a worker mid-batch", None)
        report(record_property, figures)
        record_property(
            "fault", f"  (the stopped worker finished its chunk and exited in {finished:.1f} s)"
        )

        assert batch["status"] == "succeeded"
        assert_exactly_once(figures)
        assert "Re-enqueued" not in cluster.log("w2").read_text()


def test_a_poison_job_ends_failed_after_bounded_attempts(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    # A job that kills its worker process each time it runs (here: the test does the
    # killing). With max_job_attempts=2 the third start gives up with a reason.
    with (
        running_cluster(
            redis_url, tmp_path, registry, max_job_attempts=2, transient_retries=1
        ) as cluster,
        cluster.api() as api,
    ):
        cluster.start("w1")
        w1 = cluster.workers["w1"]
        resp = api.post("/v1/jobs", files={"file": ("g.png", png_bytes(24), "image/png")})
        job_id = resp.json()["id"]
        kills = 0
        while True:
            job = cluster.jobs.get(job_id)
            if job.status.value in ("succeeded", "failed"):
                break
            holder = cluster.leases.holder(job_unit(job_id))
            # The poison strikes while the job runs its model; a start past the limit
            # does not run it (it fails the job at once), so nothing kills that one.
            if (
                holder is not None
                and holder.pid in process_tree(w1.pid)[1:]
                and job.attempts == kills + 1 <= 2
            ):
                os.kill(holder.pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.02)

        record_property(
            "fault",
            f"poison job (max_job_attempts=2): {kills} worker processes killed, "
            f"{job.attempts} starts, ended {job.status.value}",
        )
        assert kills == 2 and job.status.value == "failed"
        assert job.attempts == 3 and "started 2 times without finishing" in job.error.detail
        assert w1.poll() is None


def test_two_workers_and_concurrent_identical_requests_make_one_job(
    redis_url: str, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(redis_url, tmp_path, registry) as cluster:
        cluster.start("w1")
        cluster.start("w2")
        with serve(create_app(cluster.api_settings)) as live:
            barrier = threading.Barrier(8)
            image = png_bytes(24, seed=9)

            def submit(_: int) -> httpx.Response:
                with httpx.Client(timeout=30) as http:
                    barrier.wait()
                    return http.post(
                        f"{live.url}/v1/jobs",
                        files={"file": ("g.png", image, "image/png")},
                        headers={"Idempotency-Key": "one-galaxy"},
                    )

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(submit, range(8)))
            [job_id] = {r.json()["id"] for r in answers}
            with httpx.Client(timeout=30) as http:
                deadline = time.monotonic() + 60
                while (job := http.get(f"{live.url}/v1/jobs/{job_id}?wait=5").json())[
                    "status"
                ] not in ("succeeded", "failed"):
                    assert time.monotonic() < deadline, cluster.logs_text()

        record_property(
            "fault",
            f"8 concurrent identical requests, 2 workers: {len({r.json()['id'] for r in answers})}"
            f" job, {job['attempts']} attempt(s), status {job['status']}",
        )
        assert sorted(r.status_code for r in answers) == [200] * 7 + [202]
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert len(list(cluster.redis.scan_iter(match=f"{cluster.prefix}:job:*"))) == 1
