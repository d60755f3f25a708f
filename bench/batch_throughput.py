"""Batch throughput: a whole catalog through the system vs. the same images in one process.

Prints, in one run on this machine:

1. the system — an N-row catalog (names 70 %, sky positions 20 %, image URLs 10 %)
   submitted in one request to the API (a uvicorn subprocess), chunked into Redis,
   answered by W real Celery worker processes that resolve names offline, fetch
   cutouts from a local HTTP server standing in for the survey service (cutout cache
   on), orient and preprocess them and run one ensemble inference per chunk; timed
   from the POST to the last row recorded;
2. the baseline, in this process with no queue and no HTTP, over the same images:
   (a) preprocess + ensemble on the images the models see, in chunks of the same size;
   (b) orient (rotate by PA, crop) + preprocess + ensemble, from the raw cutouts —
       the worker's CPU work per target row; plus the cost of resolving a row.

Models: the committed default (``models/inclination/<latest>``) when there is one,
else a tiny real ONNX registry (``tests/helpers/tiny_models.py``) — the figures then
measure the pipeline around the network, not the network.

Usage: ``python bench/batch_throughput.py [--rows 10000] [--workers 2] [--chunk-rows 128]
[--fetch-threads 8] [--cutout-pixels 256] [--models DIR] [--baseline-rows 2000]``
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, start_worker, stop
from services.worker.inference import predict
from services.worker.sessions import SessionCache
from shared.jobstore import JobStore
from services.worker.orientation import orient_cutout, padded_fov_arcmin
from shared.preprocessing import preprocess
from shared.registry import RegistryReader
from shared.resolver import get_resolver
from shared.settings import REPO_ROOT
from shared.targets import resolve_target
from tests.helpers.cutout_server import CutoutStandIn, cutout_png
from tests.helpers.tiny_models import publish_tiny_regression

TASK = "inclination"
NAMES = [
    "M31", "M33", "M51", "M63", "M64", "M65", "M66", "M74", "M77", "M81", "M82", "M83",
    "M88", "M90", "M94", "M95", "M96", "M98", "M99", "M100", "M101", "M104", "M106",
    "M108", "M109", "NGC 253", "NGC 891", "NGC 2403", "NGC 2841", "NGC 3115", "NGC 3628",
    "NGC 4013", "NGC 4216", "NGC 4565", "NGC 4631", "NGC 5907", "NGC 6946", "NGC 7331",
    "IC 342", "NGC 3521",
]  # fmt: skip
POSITIONS = 50


def catalog_rows(n: int, image_base: str) -> list[dict[str, str]]:
    """Names (70 %), positions (20 %), image URLs (10 %), and two columns kept as they are."""
    rows = []
    for i in range(n):
        row = {"id": f"obj{i:06d}", "name": "", "ra": "", "dec": "", "image_url": ""}
        kind, k = i % 10, i // 10
        if kind < 7:
            row["name"] = NAMES[(7 * k + kind) % len(NAMES)]
        elif kind < 9:
            row["ra"], row["dec"] = f"{150 + ((2 * k + kind - 7) % POSITIONS) * 0.1:.1f}", "2.0"
        else:
            row["image_url"] = f"{image_base}/images/g{k % 100}.png"
        row["survey"], row["weight"] = f"field-{i % 7}", f"{(i % 13) / 13:.4f}"
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def pick_models(tmp: Path, chosen: Path | None) -> tuple[Path, str]:
    if chosen is not None:
        return chosen, f"{chosen}"
    default = REPO_ROOT / "models"
    if TASK in RegistryReader(default).tasks():
        return default, f"committed default ({default})"
    root = tmp / "models"
    root.mkdir()
    publish_tiny_regression(root)
    return root, "tiny ONNX registry (3 members, 8×8 input) — no default model is committed"


# -- the system ---------------------------------------------------------------------------


def run_system(args: argparse.Namespace, tmp: Path, models: Path, stand_in: CutoutStandIn) -> dict:
    redis_url, redis_proc = start_redis(tmp / "redis", appendonly=False)
    prefix = "bench"
    env = {
        "SKYSERVE_REDIS_URL": redis_url,
        "SKYSERVE_KEY_PREFIX": prefix,
        "SKYSERVE_CELERY_QUEUE": prefix,
        "SKYSERVE_MODELS_DIR": str(models),
        "SKYSERVE_INTRA_OP_THREADS": "1",
        "SKYSERVE_CUTOUT_PROVIDER": "http",
        "SKYSERVE_CUTOUT_URL_TEMPLATE": stand_in.template,
        "SKYSERVE_CUTOUT_ALLOWED_HOSTS": stand_in.netloc,
        # The stand-in listens on loopback, which deployments refuse.
        "SKYSERVE_CUTOUT_ALLOW_PRIVATE_ADDRESSES": "true",
        "SKYSERVE_CUTOUT_PIXELS": str(args.cutout_pixels),
        "SKYSERVE_CUTOUT_CACHE_DIR": str(tmp / "cutout-cache"),
        "SKYSERVE_FETCH_THREADS": str(args.fetch_threads),
        "SKYSERVE_BATCH_CHUNK_ROWS": str(args.chunk_rows),
        "SKYSERVE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "SKYSERVE_HEARTBEAT_TTL_SECONDS": "5",
    }
    children: list[subprocess.Popen[bytes]] = [redis_proc]
    try:
        workers = [
            start_worker(env, pool="solo", concurrency=1, log_file=tmp / f"worker-{w}.log")
            for w in range(args.workers)
        ]
        children += workers
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env={**os.environ, **env},
            cwd=REPO_ROOT,
        )  # fmt: skip
        children.append(api)
        base = f"http://127.0.0.1:{port}"
        client = redis.Redis.from_url(redis_url)
        store = JobStore(client, prefix=prefix, ttl_seconds=3600)
        deadline = time.monotonic() + 120
        while len(store.workers()) < args.workers or not _healthy(base):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the workers or the API did not start; see the logs in " + str(tmp)
                )
            time.sleep(0.2)

        body = to_csv(catalog_rows(args.rows, stand_in.base_url))
        with httpx.Client(base_url=base, timeout=300) as http:
            start = time.perf_counter()
            resp = http.post(
                "/v1/batches", content=body, headers={"content-type": "text/csv"},
                params={"tasks": TASK},
            )  # fmt: skip
            resp.raise_for_status()
            submitted = time.perf_counter()
            batch_id = resp.json()["id"]
            while True:
                batch = http.get(f"/v1/batches/{batch_id}").json()
                if batch["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.1)
            finished = time.perf_counter()
            fetched = time.perf_counter()
            results = http.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"})
            downloaded = time.perf_counter() - fetched
        client.close()
        return {
            "rows": args.rows,
            "chunks": batch["chunks"],
            "status": batch["status"],
            "done": batch["progress"]["done"],
            "failed": batch["progress"]["failed"],
            "submit_s": submitted - start,
            "total_s": finished - start,
            "download_s": downloaded,
            "result_lines": results.text.count("\n") - 1,
            "cutout_requests": len(stand_in.cutout_requests()),
            "url_requests": len(stand_in.requests) - len(stand_in.cutout_requests()),
        }
    finally:
        for proc in reversed(children):
            stop(proc)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- the baseline -------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace, models: Path, stand_in: CutoutStandIn) -> dict:
    """The same rows' images, in one process: no broker, no Redis, no HTTP.

    Rates are measured on the first ``--baseline-rows`` rows (the catalog repeats itself
    every few hundred rows, so a sample gives the same rate as the whole).
    """
    rows = catalog_rows(args.rows, stand_in.base_url)[: args.baseline_rows]
    resolver = get_resolver()
    start = time.perf_counter()
    targets = [resolve_target(r, resolver) if not r["image_url"] else None for r in rows]
    resolve_s = time.perf_counter() - start
    raw_cutout = cutout_png(args.cutout_pixels)
    url_images = {r["image_url"]: httpx.get(r["image_url"]).content for r in rows if r["image_url"]}

    def fetched(target: object, row: dict[str, str]) -> tuple[bytes, float]:
        if target is None:
            return url_images[row["image_url"]], 0.0
        fov = target.fov_arcmin  # type: ignore[attr-defined]
        pa = target.pa_deg  # type: ignore[attr-defined]
        return raw_cutout, padded_fov_arcmin(fov) if pa is not None else fov

    # What the models see (computed outside the timed loops) for (a).
    seen: list[bytes] = []
    for target, row in zip(targets, rows, strict=True):
        data, image_fov = fetched(target, row)
        if target is not None:
            data = orient_cutout(data, target.pa_deg, target.fov_arcmin, image_fov_arcmin=image_fov)
        seen.append(data)

    cache = SessionCache(
        RegistryReader(models), providers=["CPUExecutionProvider"], intra_op_threads=1
    )
    model = cache.get(TASK)
    definition = cache.task_definitions[TASK]
    spec = model.manifest.input
    predict(definition, model, preprocess(seen[0], spec)[None], max_batch_size=32)  # warm up

    start = time.perf_counter()
    for i in range(0, len(seen), args.chunk_rows):
        batch = np.stack([preprocess(d, spec) for d in seen[i : i + args.chunk_rows]])
        predict(definition, model, batch, max_batch_size=32)
    preprocess_infer_s = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(0, len(rows), args.chunk_rows):
        images = []
        for target, row in zip(
            targets[i : i + args.chunk_rows], rows[i : i + args.chunk_rows], strict=True
        ):
            data, image_fov = fetched(target, row)
            if target is not None:
                data = orient_cutout(
                    data, target.pa_deg, target.fov_arcmin, image_fov_arcmin=image_fov
                )
            images.append(preprocess(data, spec))
        predict(definition, model, np.stack(images), max_batch_size=32)
    orient_s = time.perf_counter() - start

    start = time.perf_counter()
    batch = np.stack([preprocess(d, spec) for d in seen[: args.chunk_rows]])
    preprocess_s = time.perf_counter() - start
    start = time.perf_counter()
    predict(definition, model, batch, max_batch_size=32)
    infer_s = time.perf_counter() - start
    return {
        "resolve_s": resolve_s,
        "preprocess_infer_s": preprocess_infer_s,
        "orient_preprocess_infer_s": orient_s,
        "chunk_preprocess_ms": preprocess_s * 1000,
        "chunk_infer_ms": infer_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (solo pool each)")
    parser.add_argument("--chunk-rows", type=int, default=128, help="API rows per chunk task")
    parser.add_argument(
        "--fetch-threads", type=int, default=8, help="worker fetch threads per chunk"
    )
    parser.add_argument("--cutout-pixels", type=int, default=256, help="side of requested cutouts")
    parser.add_argument("--models", type=Path, default=None, help="registry root")
    parser.add_argument(
        "--baseline-rows", type=int, default=2000, help="rows the in-process baseline times"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skyserve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models, models_text = pick_models(tmp, args.models)
        stand_in = CutoutStandIn().start()
        try:
            print(f"models: {models_text}")
            print(
                f"machine: {os.cpu_count()} CPU cores; {args.rows:,} rows, {args.workers} worker "
                f"process(es), {args.chunk_rows} rows/chunk, {args.fetch_threads} fetch threads, "
                f"{args.cutout_pixels}-px cutouts (cache on)\n"
            )
            system = run_system(args, tmp, models, stand_in)
            stand_in.clear()
            base = run_baseline(args, models, stand_in)
        finally:
            stand_in.stop()

    n = args.rows
    b = min(args.rows, args.baseline_rows)
    print("system (API + Redis + workers + cutout stand-in), end to end:")
    print(
        f"  {n / system['total_s']:10.1f} rows/s   {system['total_s']:.1f} s for {n:,} rows "
        f"({system['chunks']} chunks; {system['done']:,} done, {system['failed']} failed, "
        f"status {system['status']})"
    )
    print(f"  {'':10} submit (upload + ingest + enqueue): {system['submit_s']:.2f} s")
    print(
        f"  {'':10} results CSV download: {system['download_s']:.2f} s "
        f"({system['result_lines']:,} rows)"
    )
    print(
        f"  {'':10} stand-in requests: {system['cutout_requests']} cutouts (cache), "
        f"{system['url_requests']} image URLs"
    )
    print(f"baseline (one process, no queue, no HTTP, intra-op threads 1; first {b:,} rows):")
    print(
        f"  {b / base['preprocess_infer_s']:10.1f} rows/s   (a) preprocess + ensemble over "
        f"the images the models see, {args.chunk_rows} per batch"
    )
    print(
        f"  {b / base['orient_preprocess_infer_s']:10.1f} rows/s   (b) orient + preprocess + "
        f"ensemble from the raw cutouts (the worker's CPU work per row)"
    )
    print(
        f"  {b / base['resolve_s']:10.1f} rows/s   resolving the rows' targets (OpenNGC, offline)"
    )
    print(
        f"  one chunk of {args.chunk_rows}: preprocess {base['chunk_preprocess_ms']:.1f} ms, "
        f"ensemble {base['chunk_infer_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
