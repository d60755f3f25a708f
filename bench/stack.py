"""A real local skyserve for the benchmarks, and the in-process baselines they compare with.

:func:`running_stack` starts what ``make run`` starts, as separate processes: a Redis
server, Celery worker(s) and the API under uvicorn, each with ONNX Runtime held to one
intra-op thread per worker process (``--intra-op-threads``), the workers serving
``/metrics``. :func:`raw_ensemble_rate` is the baseline the system is held against:
the same ensemble through the worker's own inference code, in as many plain processes
as the system has worker processes, on images already preprocessed (no decode, no
queue, no HTTP): the most this machine gives for those models.

Used by ``bench/latency.py``, ``bench/catalog.py`` and ``bench/scaling.py``; not a
benchmark itself.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from services.local_stack import free_port, start_redis, start_worker, stop  # noqa: E402
from shared.jobstore import JobStore  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402

__all__ = [
    "Stack",
    "default_models",
    "in_process_answer_ms",
    "percentile",
    "raw_ensemble_rate",
    "running_stack",
    "scrape",
]


def default_models() -> Path:
    """The committed default registry (``models/``)."""
    return REPO_ROOT / "models"


@dataclass
class Stack:
    """A running local skyserve: its API address, Redis and worker metrics ports."""

    base_url: str
    redis_url: str
    prefix: str
    metrics_ports: list[int]
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every worker's metrics, summed over workers."""
        total: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for port in self.metrics_ports:
            for key, value in scrape(f"http://127.0.0.1:{port}/metrics").items():
                total[key] = total.get(key, 0.0) + value
        return total


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus endpoint's samples: (name, sorted labels) → value ({} if it does not answer)."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_stack(
    tmp: Path,
    *,
    models: Path,
    workers: int = 2,
    pool: str = "prefork",
    intra_op_threads: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Redis + ``workers`` worker processes + the API; stopped when the block ends.

    ``pool="prefork"`` is one Celery worker with ``workers`` pool processes (what
    ``make run`` starts); ``pool="solo"`` is ``workers`` separate single-process workers.
    """
    redis_url, redis_proc = start_redis(tmp / "redis", appendonly=False)
    prefix = "bench"
    env = {
        "SKYSERVE_REDIS_URL": redis_url,
        "SKYSERVE_KEY_PREFIX": prefix,
        "SKYSERVE_CELERY_QUEUE": prefix,
        "SKYSERVE_MODELS_DIR": str(models),
        "SKYSERVE_INTRA_OP_THREADS": str(intra_op_threads),
        "SKYSERVE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "SKYSERVE_HEARTBEAT_TTL_SECONDS": "5",
        "SKYSERVE_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    stack = Stack(base_url="", redis_url=redis_url, prefix=prefix, metrics_ports=[], tmp=tmp)
    stack.processes.append(redis_proc)
    try:
        layout = [(pool, workers)] if pool == "prefork" else [("solo", 1)] * workers
        for n, (kind, concurrency) in enumerate(layout):
            port = free_port()
            stack.metrics_ports.append(port)
            stack.processes.append(
                start_worker(
                    {
                        **env,
                        "SKYSERVE_WORKER_METRICS_PORT": str(port),
                        # A fresh multiprocess directory per worker (see services/worker/metrics.py).
                        "PROMETHEUS_MULTIPROC_DIR": str(_fresh_dir(tmp / f"metrics-{n}")),
                    },
                    pool=kind,
                    concurrency=concurrency,
                    log_file=tmp / f"worker-{n}.log",
                )
            )
        api_port = free_port()
        stack.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning",
                 "--no-access-log"],
                env={**os.environ, **env},
                cwd=REPO_ROOT,
            )  # fmt: skip
        )
        stack.base_url = f"http://127.0.0.1:{api_port}"
        client = redis.Redis.from_url(redis_url)
        store = JobStore(client, prefix=prefix, ttl_seconds=3600)
        deadline = time.monotonic() + 180
        while True:
            ready = [w for w in store.workers() if w.get("ready")]
            if len(ready) >= workers and _healthy(stack.base_url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers or the API did not start; see the logs in {tmp}")
            time.sleep(0.2)
        client.close()
        yield stack
    finally:
        for proc in reversed(stack.processes):
            stop(proc)


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for item in path.iterdir():
        item.unlink()
    return path


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


# -- baselines ---------------------------------------------------------------------------


def _load(models: Path, task: str, threads: int):  # type: ignore[no-untyped-def]
    from services.worker.sessions import SessionCache

    cache = SessionCache(
        RegistryReader(models), providers=["CPUExecutionProvider"], intra_op_threads=threads
    )
    return cache.get(task), cache.task_definitions[task]


def _ensemble_worker(args: tuple[Path, str, bytes, int, float, int, object, object]) -> None:
    models, task, image, batch, seconds, threads, start, out = args
    from services.worker.inference import predict
    from shared.preprocessing import preprocess

    model, definition = _load(models, task, threads)
    x = np.repeat(preprocess(image, model.manifest.input)[None], batch, axis=0)
    predict(definition, model, x, max_batch_size=max(batch, 32))  # warm up
    start.wait()  # type: ignore[attr-defined]
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        predict(definition, model, x, max_batch_size=max(batch, 32))
        done += batch
    out.put(done / (time.perf_counter() - began))  # type: ignore[attr-defined]


def raw_ensemble_rate(
    models: Path, task: str, image: bytes, *, processes: int, batch: int, seconds: float = 8.0,
    intra_op_threads: int = 1,
) -> float:
    """Images/s of ``task``'s ensemble alone (preprocessed input, ``batch`` images per run)
    in ``processes`` processes running at once: the limit the system is compared with."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=_ensemble_worker,
            args=((models, task, image, batch, seconds, intra_op_threads, start, out),),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    rates = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join()
    return float(sum(rates))


def in_process_answer_ms(models: Path, task: str, image: bytes, *, repeats: int = 200) -> dict[str, float]:
    """The same single-image job done in this process by the worker's own code (decode +
    preprocess + ensemble, one image): median milliseconds, whole and per part."""
    from services.worker.inference import predict
    from shared.preprocessing import preprocess

    model, definition = _load(models, task, 1)
    spec = model.manifest.input
    whole, decode, infer = [], [], []
    for _ in range(repeats + 10):
        t0 = time.perf_counter()
        x = preprocess(image, spec)
        t1 = time.perf_counter()
        predict(definition, model, x[None], max_batch_size=32)
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        infer.append(t2 - t1)
        whole.append(t2 - t0)
    return {
        "total_ms": 1000 * percentile(whole[10:], 50),
        "decode_ms": 1000 * percentile(decode[10:], 50),
        "inference_ms": 1000 * percentile(infer[10:], 50),
    }
