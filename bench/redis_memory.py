"""What skyserve keeps in Redis, measured: the figures behind deploy/README.md's sizing.

Starts a real Redis and, in this process, the real API; submits single-image jobs, a
zip batch of images and a CSV catalog while no worker runs (so their input sits in
Redis, queued), measures it with ``MEMORY USAGE``, then starts a real worker on the
committed default models, lets it answer the jobs and the zip and measures again (the
catalog, whose rows would need cutouts, is cancelled instead). Prints bytes per job and
per batch row while queued and once finished, and the zip's upload size.

Usage: ``python bench/redis_memory.py [--jobs 20] [--images 200] [--rows 10000] [--models DIR]``
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import redis
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.local_stack import start_redis, start_worker, stop
from shared.settings import REPO_ROOT
from tests.helpers.images import ellipse, encode

TASK = "inclination"


def usage(client: redis.Redis, pattern: str) -> tuple[int, int]:
    """(keys, bytes) of the keys matching ``pattern``, by Redis's own MEMORY USAGE."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    return len(keys), sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)


def wait(api: TestClient, path: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = api.get(path).json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not finish: {record}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="redis-memory-"))
    url, redis_proc = start_redis(tmp / "redis", appendonly=False)
    client = redis.Redis.from_url(url)
    prefix = f"mem-{uuid.uuid4().hex[:8]}"
    settings = ApiSettings(
        redis_url=url, key_prefix=prefix, celery_queue=prefix, models_dir=args.models
    )
    pngs = [encode(ellipse(256, axis_ratio=0.3 + 0.6 * (k % 7) / 7, seed=k)) for k in range(50)]
    worker = None
    try:
        with TestClient(create_app(settings)) as api:
            jobs = [
                api.post(
                    "/v1/jobs",
                    files={"file": ("g.png", pngs[k % len(pngs)], "image/png")},
                    data={"tasks": TASK},
                ).json()["id"]
                for k in range(args.jobs)
            ]
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for k in range(args.images):
                    zf.writestr(f"img/g{k:05d}.png", pngs[k % len(pngs)])
            zipped = api.post(
                "/v1/batches",
                files={"file": ("set.zip", archive.getvalue(), "application/zip")},
                data={"tasks": TASK},
            ).json()
            catalog = "id,pgc,survey,weight\n" + "".join(
                f"obj{k:06d},{1000 + k},field-{k % 7},{(k % 13) / 13:.4f}\n"
                for k in range(args.rows)
            )
            csv_batch = api.post(
                f"/v1/batches?tasks={TASK}", content=catalog, headers={"Content-Type": "text/csv"}
            ).json()

            messages = int(client.llen(prefix))
            zip_id, csv_id = zipped["id"], csv_batch["id"]
            # name -> (keys, bytes, how many units the bytes are for)
            queued = {
                "job payloads": (*usage(client, f"{prefix}:blob:*"), args.jobs),
                "job records": (*usage(client, f"{prefix}:job:*"), args.jobs),
                "zip images": (*usage(client, f"{prefix}:batch:{zip_id}:files"), args.images),
                "zip rows": (*usage(client, f"{prefix}:batch:{zip_id}:chunk:*"), args.images),
                "csv rows": (*usage(client, f"{prefix}:batch:{csv_id}:chunk:*"), args.rows),
                "broker messages": (1, int(client.memory_usage(prefix) or 0), messages),
            }
            # The catalog's rows would need cutouts (none here): cancel it, which leaves
            # its input ENDED_INPUT_TTL seconds for chunks that might still be running.
            api.delete(f"/v1/batches/{csv_batch['id']}")
            worker = start_worker(
                {
                    "SKYSERVE_REDIS_URL": url,
                    "SKYSERVE_KEY_PREFIX": prefix,
                    "SKYSERVE_CELERY_QUEUE": prefix,
                    "SKYSERVE_MODELS_DIR": str(args.models),
                    "SKYSERVE_CUTOUT_PROVIDER": "none",  # catalog rows fail fast: no network
                },
                concurrency=1,
                log_file=tmp / "worker.log",
            )
            for job in jobs:
                wait(api, f"/v1/jobs/{job}")
            wait(api, f"/v1/batches/{zipped['id']}")
            chunk0 = f"{prefix}:batch:{csv_batch['id']}:chunk:0"
            cancelled_ttl = int(client.ttl(chunk0))
            zip_input = [
                usage(client, f"{prefix}:batch:{zip_id}:{p}") for p in ("files", "chunk:*")
            ]
            done = {
                "job payloads": (*usage(client, f"{prefix}:blob:*"), args.jobs),
                "job records": (*usage(client, f"{prefix}:job:*"), args.jobs),
                "zip input": (
                    sum(k for k, _ in zip_input),
                    sum(b for _, b in zip_input),
                    args.images,
                ),
                "zip results": (*usage(client, f"{prefix}:batch:{zip_id}:result:*"), args.images),
            }
    finally:
        if worker is not None:
            stop(worker)
        client.close()
        stop(redis_proc)

    print(
        f"Redis memory, by MEMORY USAGE ({args.jobs} jobs, a zip of {args.images} "
        f"256x256 PNGs, a CSV of {args.rows:,} rows; task {TASK}):"
    )
    print(f"  zip upload {len(archive.getvalue()):,} bytes")
    for title, table in (("queued (no worker yet)", queued), ("after the worker answered", done)):
        print(f"  {title}:")
        for name, (keys, size, units) in table.items():
            print(
                f"    {name:<16} {keys:>4} keys {size:>12,} bytes  "
                f"{size / units:>8,.0f} bytes per {units:,}"
            )
    print(f"  the cancelled CSV batch's input expires in {cancelled_ttl} s")


if __name__ == "__main__":
    main()
