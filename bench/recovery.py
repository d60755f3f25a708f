"""How long work stays stranded when a whole worker dies, with the production lease settings.

Starts a real Redis, two real Celery workers (prefork, the first with two processes)
on a deliberately slow real ONNX model (about two seconds per chunk), submits a batch
through the real API, waits until each of the first worker's processes runs a chunk,
then SIGKILLs that worker with its children (a lost machine) and measures how long
until the stranded chunks run again and are recorded, and whether every row was
counted exactly once.

Without leases those chunks would wait for the broker's visibility timeout (printed as
the bound they would otherwise have); with them, about ``lease_seconds`` plus one sweep.

Usage: ``python bench/recovery.py [--lease 60] [--renew 10] [--sweep 20] [--rows 48]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import start_redis, stop
from shared.settings import SkyserveSettings
from tests.helpers.faults import (
    audit_batch,
    kill_tree,
    process_tree,
    running_cluster,
    zip_of_images,
)
from tests.worker.onnx_models import publish, slow_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lease", type=float, default=60.0, help="lease_seconds")
    parser.add_argument("--renew", type=float, default=10.0, help="lease_renew_seconds")
    parser.add_argument("--sweep", type=float, default=20.0, help="sweep_interval_seconds")
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="recovery-"))
    registry = tmp / "models"
    publish(registry, {"m0": lambda p: slow_model(p, iterations=400_000)}, tta=("identity",))
    url, redis_proc = start_redis(tmp / "redis", appendonly=False)
    try:
        with (
            running_cluster(
                url,
                tmp,
                registry,
                lease_seconds=args.lease,
                lease_renew_seconds=args.renew,
                sweep_interval_seconds=args.sweep,
            ) as cluster,
            cluster.api() as api,
        ):
            cluster.start("w1", concurrency=2)
            cluster.start("w2")
            w1 = cluster.workers["w1"]
            resp = api.post(
                "/v1/batches",
                files={"file": ("set.zip", zip_of_images(args.rows), "application/zip")},
                data={"tasks": "inclination"},
            )
            batch_id = resp.json()["id"]
            pids = set(process_tree(w1.pid))
            while len(stranded := [u for u, p in cluster.holders().items() if p in pids]) < 2:
                time.sleep(0.05)
            kill_tree(w1)
            killed = time.monotonic()
            chunks = [int(u.rsplit(":", 1)[1]) for u in stranded]
            restarted = None
            while True:
                holders = cluster.holders()
                done = {k for k in chunks if cluster.batches.has_result(batch_id, k)}
                running = {
                    int(u.rsplit(":", 1)[1])
                    for u, p in holders.items()
                    if u in stranded and p not in (None, *pids)
                }
                if restarted is None and done | running == set(chunks):
                    restarted = time.monotonic() - killed
                if done == set(chunks):
                    recorded = time.monotonic() - killed
                    break
                time.sleep(0.1)
            while api.get(f"/v1/batches/{batch_id}").json()["status"] != "succeeded":
                time.sleep(0.2)
            figures = audit_batch(api, batch_id, "whole worker SIGKILLed mid-batch", restarted)
    finally:
        stop(redis_proc)

    vt = SkyserveSettings().visibility_timeout_seconds
    print(
        f"lease {args.lease:g} s, renewed every {args.renew:g} s, sweep every {args.sweep:g} s; "
        f"{len(chunks)} chunks stranded"
    )
    print(f"  {figures.line()}")
    print(f"  stranded chunks ran again after {restarted:.1f} s, recorded after {recorded:.1f} s")
    print(f"  without leases: redelivered after the visibility timeout, {vt} s (was 3600 s)")


if __name__ == "__main__":
    main()
