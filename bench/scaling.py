"""Worker scaling: catalog throughput with 1, 2, … worker processes, against linear.

For each worker count W (``--workers 1,2`` by default, up to the cores there are) a
fresh local skyserve (``bench/stack.py``) answers the same zip of ``--images``
256-px PNGs end to end, and the raw ensemble limit is measured in W plain processes
in the same run. Prints images/s, the efficiency against linear scaling from one
worker (rate_W / (W × rate_1)) and the fraction of the raw limit at each W.

Usage: ``python bench/scaling.py [--workers 1,2] [--images 1000] [--chunk-rows 128]
[--task inclination] [--models DIR] [--pool prefork|solo]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog import image_zip, run_batch  # noqa: E402
from bench.latency import test_image  # noqa: E402
from bench.stack import default_models, raw_ensemble_rate, running_stack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker process counts")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, default=128)
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    parser.add_argument("--task", default="inclination")
    parser.add_argument("--models", type=Path, default=None)
    args = parser.parse_args()
    models = args.models or default_models()
    counts = [int(w) for w in args.workers.split(",")]
    zipped = image_zip(args.images, args.pixels)
    image = test_image(args.pixels)
    print(f"machine: {os.cpu_count()} CPU cores (shared, busy: figures are noisy; ratios within a run count)")
    print(f"task {args.task}, models {models}, zip of {args.images:,} {args.pixels}-px PNGs, "
          f"{args.chunk_rows} rows/chunk, {args.pool} pool, ONNX Runtime 1 intra-op thread per process\n")
    print(f"{'workers':>7} {'images/s':>9} {'vs linear':>9} {'raw limit':>9} {'of raw':>7} {'raw vs linear':>13}")
    first: tuple[float, float] | None = None
    for workers in counts:
        raw = raw_ensemble_rate(models, args.task, image, processes=workers, batch=args.chunk_rows)
        with tempfile.TemporaryDirectory(prefix="skyserve-bench-") as tmp_name:
            with running_stack(
                Path(tmp_name), models=models, workers=workers, pool=args.pool,
                extra_env={"SKYSERVE_BATCH_CHUNK_ROWS": str(args.chunk_rows)},
            ) as stack:
                result = run_batch(
                    stack, task=args.task,
                    post={"files": {"file": ("images.zip", zipped, "application/zip")}},
                )
        rate = result["rows"] / result["total_s"]
        if first is None:
            first = (rate / workers, raw / workers)
        print(f"{workers:>7} {rate:>9.1f} {rate / (workers * first[0]):>9.2f} {raw:>9.1f} "
              f"{rate / raw:>7.2f} {raw / (workers * first[1]):>13.2f}")


if __name__ == "__main__":
    main()
