"""Real Redis servers and real Celery worker processes for integration tests.

The starters are the ones ``skyserve-local`` runs (:mod:`services.local_stack`), so
what the tests exercise is what a user starts; this module adds what tests need on
top: a worker environment for a test's prefix and registry, a log file to show on
failure, waiting for the worker's heartbeat, and teardown that always happens.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from services.local_stack import free_port, stop
from services.local_stack import start_redis as _start_redis
from services.local_stack import start_worker as _start_worker
from shared.jobstore import JobStore

__all__ = [
    "free_port",
    "log_tail",
    "running_worker",
    "start_redis",
    "start_worker",
    "stop",
    "wait_for_worker",
    "worker_env",
]


def start_redis(data_dir: Path, *, timeout_s: float = 10.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a throw-away Redis server (no AOF, no snapshots) on a free port.

    Returns
    -------
    (url, process)
        Stop the process with :func:`stop`.
    """
    return _start_redis(data_dir, appendonly=False, timeout_s=timeout_s)


def worker_env(
    *, redis_url: str, key_prefix: str, models_dir: Path, **extra: str | float
) -> dict[str, str]:
    """Environment for a worker that serves ``models_dir`` on queue ``key_prefix``.

    ``extra`` adds ``SKYSERVE_<NAME>`` variables (e.g. ``heartbeat_interval_seconds=1``).
    """
    env = {
        "SKYSERVE_REDIS_URL": redis_url,
        "SKYSERVE_KEY_PREFIX": key_prefix,
        "SKYSERVE_CELERY_QUEUE": key_prefix,
        "SKYSERVE_MODELS_DIR": str(models_dir),
        # Beat often so tests see the worker quickly; keep ONNX Runtime to one thread
        # on machines shared with other test runs.
        "SKYSERVE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "SKYSERVE_HEARTBEAT_TTL_SECONDS": "5",
        "SKYSERVE_INTRA_OP_THREADS": "1",
    }
    env.update({f"SKYSERVE_{name.upper()}": str(value) for name, value in extra.items()})
    return env


def start_worker(
    env: dict[str, str], *, log_file: Path, pool: str = "solo", concurrency: int = 1
) -> subprocess.Popen[bytes]:
    """Start ``celery -A services.worker.celery_app worker`` on the queue named in ``env``.

    Its output goes to ``log_file`` (see :func:`log_tail`). Stop it with :func:`stop`.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return _start_worker(env, concurrency=concurrency, pool=pool, log_file=log_file)


def wait_for_worker(
    store: JobStore,
    proc: subprocess.Popen[bytes],
    *,
    log_file: Path | None = None,
    timeout_s: float = 60.0,
    served: str | None = None,
) -> dict[str, Any]:
    """Wait until a heartbeat of the worker shows up in Redis; return that record.

    The record is the main process's (solo pool) or a child's (prefork pool: its
    ``ppid`` is the worker's pid). With ``served``, wait until it reports serving that task.

    Raises
    ------
    RuntimeError
        If the process exits or ``timeout_s`` passes first (the log tail says why).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for info in store.workers():
            ours = proc.pid in (info.get("pid"), info.get("ppid"))
            if ours and (served is None or served in info.get("served", {})):
                return info
        if proc.poll() is not None:
            raise RuntimeError(f"The worker exited with {proc.returncode}.\n{log_tail(log_file)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"No heartbeat from the worker in {timeout_s} s.\n{log_tail(log_file)}"
            )
        time.sleep(0.1)


@contextmanager
def running_worker(
    env: dict[str, str],
    *,
    log_file: Path,
    pool: str = "solo",
    concurrency: int = 1,
    timeout_s: float = 60.0,
    served: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """Start a worker, wait for its heartbeat, yield ``(process, heartbeat)``, stop it."""
    client = redis.Redis.from_url(env["SKYSERVE_REDIS_URL"])
    store = JobStore(client, prefix=env["SKYSERVE_KEY_PREFIX"], ttl_seconds=3600)
    proc = start_worker(env, log_file=log_file, pool=pool, concurrency=concurrency)
    try:
        yield (
            proc,
            wait_for_worker(store, proc, log_file=log_file, timeout_s=timeout_s, served=served),
        )
    finally:
        stop(proc)
        client.close()


def log_tail(log_file: Path | None, lines: int = 60) -> str:
    """The last lines of a worker log, for assertion messages."""
    if log_file is None or not log_file.is_file():
        return "(no log)"
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
