"""Latency under concurrency: single-image jobs end to end, against raw inference.

Starts a real local skyserve (Redis, a Celery worker with ``--workers`` pool
processes, the API under uvicorn; see ``bench/stack.py``). Each of C clients
(C = 1, 8, 32 by default) submits a 256-px PNG for one task (``POST /v1/jobs``)
and waits for its answer in the same round trip pattern a client uses
(``GET /v1/jobs/{id}?wait=30``), over and over, for ``--seconds`` per level.

Prints per level: p50/p95/p99 end to end, jobs/s; at one client the overhead over raw
inference (the same image decoded + preprocessed + run through the same ensemble by
the worker's own code in this process, one image at a time) and where the time goes:
the POST's round trip, the wait in the queue (record created → worker started it),
the worker's run by stage (from the job's own timings), and the way back (job
ended → answer at the client), plus the worker's stage histograms from /metrics.

Usage: ``python bench/latency.py [--clients 1,8,32] [--seconds 20] [--workers 2]
[--pool prefork|solo] [--task inclination] [--models DIR] [--pixels 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import default_models, in_process_answer_ms, percentile, running_stack  # noqa: E402


def test_image(pixels: int, seed: int = 3) -> bytes:
    """A galaxy-like PNG: an inclined exponential disk plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:pixels, :pixels] - pixels / 2
    r = np.hypot(x * np.cos(0.5) + y * np.sin(0.5), (y * np.cos(0.5) - x * np.sin(0.5)) / 0.4)
    disk = 200 * np.exp(-r / (pixels / 12)) + rng.normal(10, 4, (pixels, pixels))
    grey = np.clip(disk, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(buf, format="PNG")
    return buf.getvalue()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _client(
    http: httpx.AsyncClient, image: bytes, task: str, until: float, out: list[dict]
) -> None:
    while time.perf_counter() < until:
        t0, w0 = time.perf_counter(), time.time()
        resp = await http.post(
            "/v1/jobs", files={"file": ("g.png", image, "image/png")}, data={"tasks": task}
        )
        t1 = time.perf_counter()
        resp.raise_for_status()
        job = await http.get(f"/v1/jobs/{resp.json()['id']}", params={"wait": 30})
        t2, w2 = time.perf_counter(), time.time()
        record = job.json()
        if record["status"] != "succeeded":
            raise RuntimeError(f"job ended {record['status']}: {record.get('error')}")
        out.append(
            {
                "total": t2 - t0,
                "post": t1 - t0,
                "sent": w0,
                "created": _ts(record["created_at"]),
                "started": _ts(record["started_at"]),
                "finished": _ts(record["finished_at"]),
                "received": w2,
                "timings": record["result"]["timings_ms"],
            }
        )


async def _level(base: str, image: bytes, task: str, clients: int, seconds: float) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        # Warm-up: connections, the worker's first run.
        warm: list[dict] = []
        await asyncio.gather(*(_client(http, image, task, time.perf_counter() + 1.0, warm) for _ in range(clients)))
        out: list[dict] = []
        began = time.perf_counter()
        await asyncio.gather(
            *(_client(http, image, task, began + seconds, out) for _ in range(clients))
        )
        return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    parser.add_argument("--task", default="inclination")
    parser.add_argument("--models", type=Path, default=None, help="registry root (default: models/)")
    parser.add_argument("--pixels", type=int, default=256, help="side of the uploaded PNG")
    args = parser.parse_args()
    models = args.models or default_models()
    image = test_image(args.pixels)
    levels = [int(c) for c in args.clients.split(",")]

    print(f"machine: {os.cpu_count()} CPU cores (shared, busy: figures are noisy; ratios within a run count)")
    print(f"task {args.task}, models {models}, {args.pixels}-px PNG, {args.workers} worker "
          f"process(es) ({args.pool} pool), ONNX Runtime 1 intra-op thread per process")
    raw = in_process_answer_ms(models, args.task, image)
    print(f"raw, in this process (the worker's decode + preprocess + ensemble, one image): "
          f"{raw['total_ms']:.1f} ms p50 (decode+preprocess {raw['decode_ms']:.1f}, "
          f"ensemble {raw['inference_ms']:.1f})\n")

    with tempfile.TemporaryDirectory(prefix="skyserve-bench-") as tmp_name:
        with running_stack(Path(tmp_name), models=models, workers=args.workers, pool=args.pool) as stack:
            print(f"{'clients':>7} {'jobs':>6} {'jobs/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
                  f" {'over raw p50':>13}")
            first: list[dict] | None = None
            before = stack.worker_metrics()
            for clients in levels:
                out, wall = asyncio.run(_level(stack.base_url, image, args.task, clients, args.seconds))
                if first is None:
                    first, after = out, stack.worker_metrics()
                totals = [1000 * r["total"] for r in out]
                p50 = percentile(totals, 50)
                print(f"{clients:>7} {len(out):>6} {len(out) / wall:>7.1f} {p50:>7.1f} "
                      f"{percentile(totals, 95):>7.1f} {percentile(totals, 99):>7.1f} "
                      f"{p50 - raw['total_ms']:>+10.1f} ms")
    assert first is not None
    _breakdown(first, raw, before, after)


def _breakdown(out: list[dict], raw: dict[str, float], before: dict, after: dict) -> None:
    def med(values: list[float]) -> float:
        return percentile(values, 50)

    print(f"\nwhere the time goes at {'one client' if out else '-'} (medians over {len(out)} jobs, ms):")
    post = med([1000 * r["post"] for r in out])
    queued = med([1000 * (r["started"] - r["created"]) for r in out])
    running = med([1000 * (r["finished"] - r["started"]) for r in out])
    back = med([1000 * (r["received"] - r["finished"]) for r in out])
    total = med([1000 * r["total"] for r in out])
    print(f"  end to end                                 {total:7.1f}")
    print(f"  POST /v1/jobs round trip                   {post:7.1f}")
    print(f"  record created → worker started it         {queued:7.1f}   (broker, pool hand-off, job start)")
    print(f"  worker started → record ended              {running:7.1f}")
    laps: dict[str, list[float]] = {}
    for r in out:
        for name, ms in r["timings"].items():
            laps.setdefault(name, []).append(ms)
    for name, values in laps.items():
        print(f"      {name:<38} {med(values):7.1f}")
    print(f"  record ended → answer at the client        {back:7.1f}   (notice, GET reply)")
    print(f"  raw in-process decode + ensemble           {raw['total_ms']:7.1f}")
    print(f"  overhead over raw (end to end − raw)       {total - raw['total_ms']:7.1f}")

    print("\nworker /metrics at one client (mean ms per job, skyserve_worker_stage_seconds):")
    for stage in ("load", "fetch", "decode", "inference", "write"):
        key = (("stage", stage),)
        n = after.get(("skyserve_worker_stage_seconds_count", key), 0) - before.get(
            ("skyserve_worker_stage_seconds_count", key), 0)
        s = after.get(("skyserve_worker_stage_seconds_sum", key), 0) - before.get(
            ("skyserve_worker_stage_seconds_sum", key), 0)
        if n:
            print(f"  {stage:<10} {1000 * s / n:7.2f}   ({int(n)} jobs)")


if __name__ == "__main__":
    main()
