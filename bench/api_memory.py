"""The API's memory while it takes a 100,000-row catalog in one request.

For each way a client can send a catalog (a ``text/csv`` body, as curl does; a
multipart upload, as the CLI and the Python client do) a fresh API process is
started (uvicorn subprocess, real Redis, no workers: the chunks just wait in the
queue), its idle RSS is read, the catalog is posted, and the process's peak RSS
(``VmHWM`` in ``/proc/<pid>/status``, reset after start-up through
``/proc/<pid>/clear_refs`` where the kernel allows) is printed with the
submission time.

Usage: ``python bench/api_memory.py [--rows 100000]``
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, stop
from shared.settings import REPO_ROOT
from tests.helpers.tiny_models import publish_tiny_regression

NAMES = ["M31", "M33", "M51", "M81", "M101", "M104", "NGC 891", "NGC 4565", "IC 342", "NGC 253"]


def write_catalog(path: Path, rows: int) -> None:
    """Names, positions and image URLs, with two extra columns, like a real catalog."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "ra", "dec", "image_url", "survey", "weight"])
        for i in range(rows):
            kind = i % 10
            name = NAMES[i % len(NAMES)] if kind < 7 else ""
            ra, dec = (f"{150 + (i % 500) * 0.01:.2f}", "2.0") if kind in (7, 8) else ("", "")
            url = f"https://images.example.org/cutouts/g{i}.png" if kind == 9 else ""
            writer.writerow(
                [f"obj{i:06d}", name, ra, dec, url, f"field-{i % 7}", f"{i % 13 / 13:.4f}"]
            )


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, same user); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """Samples VmRSS every 5 ms: a cross-check of VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.005)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def measure(mode: str, catalog: Path, env: dict[str, str]) -> dict[str, float]:
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError("the API did not start")
                time.sleep(0.1)
            # Warm up every code path once with a tiny batch, so the figure below is the
            # catalog's cost, not first-import costs.
            tiny = "id,name\na,M31\nb,M33\n"
            http.post("/v1/batches", content=tiny, headers={"content-type": "text/csv"})
            http.post("/v1/batches", files={"file": ("c.csv", tiny.encode(), "text/csv")})
            time.sleep(0.5)
            idle_rss = status_kib(api.pid, "VmRSS")
            idle_hwm = status_kib(api.pid, "VmHWM")
            peak_reset = reset_peak(api.pid)
            sampler = Sampler(api.pid)
            sampler.start()
            start = time.perf_counter()
            with catalog.open("rb") as handle:
                if mode == "text/csv body":
                    resp = http.post(
                        "/v1/batches", content=handle, headers={"content-type": "text/csv"}
                    )
                else:
                    resp = http.post(
                        "/v1/batches", files={"file": (catalog.name, handle, "text/csv")}
                    )
            elapsed = time.perf_counter() - start
            sampled = sampler.stop()
            resp.raise_for_status()
            batch = resp.json()
            return {
                "idle_rss": idle_rss / 1024,
                "idle_hwm": idle_hwm / 1024,
                "peak": status_kib(api.pid, "VmHWM") / 1024,
                "sampled_peak": sampled / 1024,
                "after_rss": status_kib(api.pid, "VmRSS") / 1024,
                "peak_reset": peak_reset,
                "seconds": elapsed,
                "rows": batch["progress"]["total"],
                "chunks": batch["chunks"],
            }
    finally:
        stop(api)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="skyserve-api-mem-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        publish_tiny_regression(models)
        catalog = tmp / "catalog.csv"
        write_catalog(catalog, args.rows)
        size_mb = catalog.stat().st_size / 1e6
        redis_url, redis_proc = start_redis(tmp / "redis", appendonly=False)
        try:
            print(f"catalog: {args.rows:,} rows, {size_mb:.1f} MB CSV; API: uvicorn, 1 process\n")
            for n, mode in enumerate(("text/csv body", "multipart upload")):
                env = {
                    "SKYSERVE_REDIS_URL": redis_url,
                    "SKYSERVE_KEY_PREFIX": f"mem{n}",
                    "SKYSERVE_CELERY_QUEUE": f"mem{n}",
                    "SKYSERVE_MODELS_DIR": str(models),
                }
                r = measure(mode, catalog, env)
                used = redis.Redis.from_url(redis_url).info("memory")["used_memory"] / 2**20
                print(f"{mode}:")
                print(f"  idle RSS (after start-up and a warm-up batch): {r['idle_rss']:7.1f} MiB")
                print(
                    f"  peak RSS while submitting:                     {r['peak']:7.1f} MiB "
                    f"(+{r['peak'] - r['idle_rss']:.1f}; sampled every 5 ms: "
                    f"{r['sampled_peak']:.1f}; VmHWM "
                    f"{'reset before the request' if r['peak_reset'] else 'since start-up'})"
                )
                print(f"  RSS after the request:                         {r['after_rss']:7.1f} MiB")
                print(
                    f"  submission: {r['seconds']:.2f} s for {r['rows']:,} rows "
                    f"({r['rows'] / r['seconds']:,.0f} rows/s, {r['chunks']} chunks queued); "
                    f"Redis now uses {used:.0f} MiB\n"
                )
        finally:
            stop(redis_proc)


if __name__ == "__main__":
    main()
