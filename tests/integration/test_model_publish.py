"""Model versions published while jobs flow: a good one takes over without a failed job,
and broken ones (bad checksum, unloadable ONNX, wrong input shape) are refused while the
previous version keeps serving, and /readyz shows which version serves and what was refused.

Two real worker processes, a real registry written to while they read it, the real API.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.helpers.faults import running_cluster, wait_until
from tests.helpers.images import png_bytes
from tests.worker.onnx_models import (
    member_file,
    publish,
    ramp_weights,
    regression_members,
    weighted_tanh_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_versions_published_under_load(redis_url: str, tmp_path: Path, record_property) -> None:
    registry = tmp_path / "models"
    publish(registry, regression_members())
    with running_cluster(redis_url, tmp_path, registry, registry_poll_seconds=0.2) as cluster:
        cluster.start("w1")
        cluster.start("w2")
        submitted: list[str] = []
        stop = threading.Event()

        def load() -> None:  # a steady stream of jobs from its own API client
            with cluster.api() as api:
                seed = 0
                while not stop.is_set():
                    resp = api.post(
                        "/v1/jobs", files={"file": ("g.png", png_bytes(24, seed=seed), "image/png")}
                    )
                    assert resp.status_code == 202, resp.text
                    submitted.append(resp.json()["id"])
                    seed += 1
                    time.sleep(0.05)

        loader = threading.Thread(target=load, name="load")
        loader.start()
        try:
            time.sleep(1.5)
            good = publish(registry, regression_members(3))  # v2: three members
            time.sleep(2.0)
            checksum = publish(registry, regression_members())  # v3, corrupted on disk
            member_file(registry, checksum, 0).write_bytes(b"flipped bits after publishing")
            time.sleep(1.0)
            garbage = publish(registry, {"m0": lambda p: p.write_bytes(b"not an ONNX model")})
            time.sleep(1.0)
            shape = publish(  # v5: a 16x16 model under a manifest that says 8x8
                registry,
                {"m0": lambda p: weighted_tanh_model(p, weights=ramp_weights(3.0, 16), bias=0.0)},
            )
            time.sleep(2.0)
        finally:
            stop.set()
            loader.join(30)
        assert (good.version, checksum.version, garbage.version, shape.version) == (2, 3, 4, 5)

        with cluster.api() as api:
            jobs = [
                wait_until(
                    lambda j=j: (
                        (job := api.get(f"/v1/jobs/{j}?wait=5").json())["status"]
                        in ("succeeded", "failed")
                        and job
                    ),
                    timeout_s=60,
                    what=f"job {j} to end",
                )
                for j in submitted
            ]
            ready = api.get("/readyz")

        versions = [j["result"]["models"]["inclination"] if j["result"] else None for j in jobs]
        failed = [j for j in jobs if j["status"] != "succeeded"]
        record_property(
            "fault",
            f"model versions published under load: {len(jobs)} jobs, {len(failed)} failed, "
            f"answered by v1: {versions.count(1)}, v2: {versions.count(2)}, "
            f"v3-v5 (broken): {sum(v not in (1, 2) for v in versions)}",
        )
        assert failed == [], failed[:3]
        assert set(versions) == {1, 2} and versions[-5:] == [2] * 5
        # Each answer names the version that gave it, and v2 answers have its three members.
        for job, version in zip(jobs, versions, strict=True):
            answer = job["result"]["tasks"]["inclination"]
            assert answer["model_version"] == version
            assert len(answer["members"]) == (3 if version == 2 else 2)
        assert versions.index(2) > 0  # v1 served before v2 was published

        assert ready.status_code == 200, ready.text
        detail = ready.json()["checks"]["models"]["detail"]
        assert detail.startswith("inclination v2 (refused"), detail
        assert "v3: inclination v3: m0.onnx does not match its sha256" in detail
        assert "v4: its model file does not load" in detail
        assert "v5: " in detail and "not (N, 8, 8, 3)" in detail
        for worker in ready.json()["workers"]:
            assert worker["served"] == {"inclination": 2}
            assert set(worker["refused"]["inclination"]) == {"3", "4", "5"}
