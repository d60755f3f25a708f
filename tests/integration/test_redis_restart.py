"""Redis restarted (AOF on) with jobs queued and running: nothing accepted is lost, and
while it is down the API answers 503 problem+json with Retry-After, then recovers by itself.

A real Redis with its append-only file, stopped and started again on the same port and
folder, real worker processes that lose their connections and find them again, the
real API. Stranded work comes back through its lease (3 s here), not the broker's
600-s visibility timeout.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local_stack import free_port, start_redis, stop
from tests.helpers.faults import (
    Cluster,
    Figures,
    audit_batch,
    running_cluster,
    wait_until,
    zip_of_images,
)
from tests.helpers.images import png_bytes
from tests.worker.onnx_models import publish, slow_iterations, slow_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

PROBLEM = "application/problem+json"
JOBS = 6


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    steps = slow_iterations(2.0, at_least=300_000)  # ~2 s a run, here and now
    publish(root, {"m0": lambda p: slow_model(p, iterations=steps)}, tta=("identity",))
    return root


class RestartableRedis:
    """A real Redis with AOF on a fixed port and folder, stopped and started by the test."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.url, self.proc = start_redis(data, port=self.port, appendonly=True)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it (the AOF is flushed on the way out)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def start(self) -> None:
        self.url, self.proc = start_redis(self.data, port=self.port, appendonly=True)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    yield server
    stop(server.proc)


def test_a_redis_restart_loses_nothing_and_the_api_says_503_meanwhile(
    aof_redis: RestartableRedis, tmp_path: Path, registry: Path, record_property
) -> None:
    with running_cluster(aof_redis.url, tmp_path, registry) as cluster, cluster.api() as api:
        cluster.start("w1")
        cluster.start("w2")
        image = {"file": ("g.png", png_bytes(24), "image/png")}
        job_ids = [
            api.post(
                "/v1/jobs", files={"file": ("g.png", png_bytes(24, seed=k), "image/png")}
            ).json()["id"]
            for k in range(JOBS)
        ]
        batch = api.post(
            "/v1/batches",
            files={"file": ("set.zip", zip_of_images(12), "application/zip")},
            data={"tasks": "inclination"},
        ).json()
        wait_until(lambda: cluster.leases.units(), timeout_s=60, what="work running")
        running = sorted(cluster.leases.units())
        queued = int(cluster.redis.llen(cluster.prefix))

        aof_redis.stop()
        down_at = time.monotonic()
        refused = [
            api.post("/v1/jobs", files=image),
            api.get(f"/v1/jobs/{job_ids[0]}"),
            api.post(
                "/v1/batches", content="id,pgc\n1,2557\n", headers={"Content-Type": "text/csv"}
            ),
            api.get(f"/v1/batches/{batch['id']}"),
            api.get("/readyz"),
        ]
        for resp in refused:
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["retry-after"]) > 0
        assert all(r.headers["content-type"] == PROBLEM for r in refused[:4])
        time.sleep(1.0)

        aof_redis.start()
        up_at = time.monotonic()
        # The API recovers by itself: same app, same client objects.
        first_ok = wait_until(
            lambda: api.get(f"/v1/jobs/{job_ids[0]}").status_code == 200 and time.monotonic(),
            timeout_s=30,
            what="the API to answer again",
        )
        stranded = wait_until(
            lambda: all(_unit_ended(cluster, u) for u in running) and time.monotonic(),
            timeout_s=150,
            what=f"the work running at the stop ({running}) to end",
            log=cluster.log("w1"),
        )
        done = wait_until(
            lambda: _all_ended(api, job_ids, batch["id"]) and time.monotonic(),
            timeout_s=150,
            what="every job and the batch to end after the restart",
            log=cluster.log("w1"),
        )
        recovered = stranded - up_at
        jobs = [api.get(f"/v1/jobs/{j}").json() for j in job_ids]
        rows = audit_batch(api, batch["id"], "Redis restart: batch rows", None)
        figures = Figures(
            scenario="Redis restart (AOF, SIGTERM, ~1 s down): single jobs",
            accepted=len(job_ids),
            completed=sum(j["status"] == "succeeded" for j in jobs),
            failed=sum(j["status"] == "failed" for j in jobs),
            lost=sum(j["status"] not in ("succeeded", "failed") for j in jobs),
            counted_twice=0,  # a job record holds one result; its attempts are below
            recovery_s=None,
        )
        timings = (
            f"  (down {up_at - down_at:.1f} s with {len(running)} unit(s) running and "
            f"{queued} message(s) queued; after the restart the API answered in "
            f"{first_ok - up_at:.1f} s, the work that was running ended in "
            f"{recovered:.1f} s, everything in {done - up_at:.1f} s; job attempts "
            f"{[j['attempts'] for j in jobs]})"
        )
        for line in (figures.line(), rows.line(), timings):
            record_property("fault", line)
            print(line)

        assert [j["status"] for j in jobs] == ["succeeded"] * JOBS, jobs
        assert (rows.lost, rows.counted_twice, rows.failed) == (0, 0, 0), rows
        assert rows.completed == rows.accepted == 12
        assert api.post("/v1/jobs", files=image).status_code == 202


def _unit_ended(cluster: Cluster, unit: str) -> bool:
    kind, _, rest = unit.partition(":")
    if kind == "job":
        return cluster.jobs.get(rest).status.value in ("succeeded", "failed", "cancelled")
    batch_id, _, chunk = rest.rpartition(":")
    return cluster.batches.has_result(batch_id, int(chunk))


def _all_ended(api, job_ids: list[str], batch_id: str) -> bool:  # type: ignore[no-untyped-def]
    ended = ("succeeded", "failed", "cancelled")
    try:
        jobs = [api.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids]
        batch = api.get(f"/v1/batches/{batch_id}").json()["status"]
    except KeyError:  # a 503 while Redis loads its AOF
        return False
    return all(s in ended for s in jobs) and batch in ended
