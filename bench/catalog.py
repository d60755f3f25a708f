"""Catalog throughput end to end, against the raw ensemble limit measured in the same run.

Starts a real local skyserve (``bench/stack.py``: Redis, a Celery worker with
``--workers`` pool processes, the API under uvicorn) and sends it, one after the
other:

1. a zip of ``--images`` 256-px PNGs (``POST /v1/batches``, one row per image);
2. a ``--rows``-row target catalog (names, sky positions, image URLs; the cutouts
   come from a local HTTP stand-in for the survey service, ``tests/helpers/cutout_server.py``,
   with the worker's cutout cache on), as in ``bench/batch_throughput.py``.

Each is timed from the start of the POST to the last row recorded (so the upload, the
ingest into Redis and the queueing are inside the figure), and reported as images/s
and as a fraction of the *raw limit*: the same ensemble run by the worker's own
inference code on already-preprocessed images, in as many plain processes as the
system has worker processes, at the chunk size (``bench/stack.py:raw_ensemble_rate``).
For the zip it also says when the first chunk was recorded, i.e. how soon workers ran
while the upload was still being unpacked.

Usage: ``python bench/catalog.py [--images 1000] [--rows 1000] [--workers 2]
[--chunk-rows 128] [--task inclination] [--models DIR] [--skip-targets]``
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batch_throughput import catalog_rows, to_csv  # noqa: E402
from bench.latency import test_image  # noqa: E402
from bench.stack import Stack, default_models, raw_ensemble_rate, running_stack  # noqa: E402
from tests.helpers.cutout_server import CutoutStandIn  # noqa: E402


def image_zip(count: int, pixels: int) -> bytes:
    """A zip of ``count`` different PNGs (stored: PNG does not compress further)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k in range(count):
            zf.writestr(f"img/g{k:05d}.png", test_image(pixels, seed=k % 50))
    return buf.getvalue()


def run_batch(stack: Stack, *, task: str, post: dict) -> dict:
    """POST one batch and wait for its last row; timings from the start of the POST."""
    with httpx.Client(base_url=stack.base_url, timeout=600) as http:
        start = time.perf_counter()
        resp = http.post("/v1/batches", params={"tasks": task}, **post)
        resp.raise_for_status()
        submitted = time.perf_counter()
        batch_id = resp.json()["id"]
        first = None
        while True:
            batch = http.get(f"/v1/batches/{batch_id}").json()
            progress = batch["progress"]
            if first is None and progress["done"] + progress["failed"] > 0:
                first = time.perf_counter()
            if batch["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        finished = time.perf_counter()
    return {
        "rows": progress["total"],
        "done": progress["done"],
        "failed": progress["failed"],
        "status": batch["status"],
        "chunks": batch["chunks"],
        "submit_s": submitted - start,
        "first_s": (first or finished) - start,
        "total_s": finished - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="PNGs in the zip (the issue's figure: 2000)")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the target catalog (the issue's figure: 3000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    parser.add_argument("--chunk-rows", type=int, default=128)
    parser.add_argument("--pixels", type=int, default=256, help="side of the PNGs and cutouts")
    parser.add_argument("--task", default="inclination")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--skip-targets", action="store_true", help="only the zip")
    args = parser.parse_args()
    models = args.models or default_models()
    print(f"machine: {os.cpu_count()} CPU cores (shared, busy: figures are noisy; ratios within a run count)")
    print(f"task {args.task}, models {models}, {args.workers} worker process(es) ({args.pool}), "
          f"{args.chunk_rows} rows/chunk, ONNX Runtime 1 intra-op thread per process\n")
    for line in run(args, models):
        print(line)


def run(args: argparse.Namespace, models: Path) -> list[str]:
    """Run the benchmark; returns the lines to print."""
    image = test_image(args.pixels)

    def limit() -> float:
        return raw_ensemble_rate(
            models, args.task, image, processes=args.workers, batch=args.chunk_rows, seconds=8
        )

    # Measured before and after the system's runs; the higher counts (the machine is
    # shared, and the limit is the best it does).
    raws = [limit()]
    zipped = image_zip(args.images, args.pixels)
    lines: list[str] = []
    stand_in = CutoutStandIn().start()
    try:
        with tempfile.TemporaryDirectory(prefix="skyserve-bench-") as tmp_name:
            cutouts = stand_in.worker_env(
                cutout_pixels=args.pixels, cutout_cache_dir=str(Path(tmp_name) / "cutout-cache")
            )
            extra = {
                "SKYSERVE_BATCH_CHUNK_ROWS": str(args.chunk_rows),
                **{f"SKYSERVE_{name.upper()}": str(value) for name, value in cutouts.items()},
            }
            with running_stack(
                Path(tmp_name), models=models, workers=args.workers, pool=args.pool, extra_env=extra
            ) as stack:
                z = run_batch(
                    stack, task=args.task,
                    post={"files": {"file": ("images.zip", zipped, "application/zip")}},
                )
                results = [(f"zip of {args.images:,} PNGs ({len(zipped) / 1e6:.0f} MB)", z)]
                if not args.skip_targets:
                    body = to_csv(catalog_rows(args.rows, stand_in.base_url))
                    t = run_batch(
                        stack, task=args.task,
                        post={"content": body, "headers": {"content-type": "text/csv"}},
                    )
                    results.append((f"target catalog of {args.rows:,} rows", t))
    finally:
        stand_in.stop()
    raws.append(limit())
    raw = max(raws)
    lines.append(
        f"raw limit: {raw:.1f} images/s ({args.task} ensemble alone on preprocessed input, "
        f"{args.workers} process(es) × batch {args.chunk_rows}; before/after the system: "
        f"{raws[0]:.1f}/{raws[1]:.1f})"
    )
    lines += [_line(what, r, raw) for what, r in results]
    return lines


def _line(what: str, r: dict, raw: float) -> str:
    rate = r["rows"] / r["total_s"]
    return (
        f"{what}: {rate:.1f} images/s end to end = {rate / raw:.2f} of the raw limit; "
        f"{r['total_s']:.1f} s ({r['done']:,} done, {r['failed']} failed, {r['chunks']} chunks, "
        f"{r['status']}); POST answered after {r['submit_s']:.1f} s, first chunk recorded "
        f"after {r['first_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
