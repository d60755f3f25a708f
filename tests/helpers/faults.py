"""Fault injection for integration tests: several real workers on one queue, short leases,
killing processes (one prefork child, or a whole worker with its children), and an
audit of what a batch or a set of jobs ended with.

The figures each fault test measures (accepted / completed / lost / counted twice /
recovery time) are recorded with ``record_property("fault", …)`` and printed in the
terminal summary by ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.leases import LeaseBook
from tests.helpers.images import png_bytes
from tests.helpers.processes import log_tail, start_worker, stop, wait_for_worker, worker_env

__all__ = [
    "Cluster",
    "Figures",
    "audit_batch",
    "kill_tree",
    "process_tree",
    "running_cluster",
    "wait_until",
    "zip_of_images",
]

#: Worker settings that make recovery fast enough to test: leases of seconds, not a minute.
FAST_RECOVERY = {
    "lease_seconds": 3,
    "lease_renew_seconds": 0.5,
    "sweep_interval_seconds": 1,
    "registry_poll_seconds": 0.5,
}


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def kill_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a worker's main process and all its children at once (a lost machine)."""
    pids = process_tree(proc.pid)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, what: str, log: Path | None = None
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{log_tail(log)}")
        time.sleep(0.05)


def zip_of_images(count: int) -> bytes:
    """A zip of ``count`` distinct real PNGs (one batch row each, no network needed)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(count):
            zf.writestr(f"g{k:03d}.png", png_bytes(24, seed=k))
    return archive.getvalue()


@dataclass
class Figures:
    """What one fault scenario ended with."""

    scenario: str
    accepted: int
    completed: int
    failed: int
    lost: int
    counted_twice: int
    recovery_s: float | None = None

    def line(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f} s to run again"
        return (
            f"{self.scenario}: accepted {self.accepted}, completed {self.completed} "
            f"(failed {self.failed}), lost {self.lost}, counted twice {self.counted_twice}, "
            f"recovery {recovery}"
        )


def audit_batch(api: TestClient, batch_id: str, scenario: str, recovery_s: float | None) -> Figures:
    """Compare a finished batch's counters with its per-row results, row by row."""
    batch = api.get(f"/v1/batches/{batch_id}").json()
    rows = api.get(f"/v1/batches/{batch_id}/results", params={"format": "json"}).json()
    numbers = [r["row"] for r in rows]
    total = batch["progress"]["total"]
    counted = batch["progress"]["done"] + batch["progress"]["failed"]
    return Figures(
        scenario=scenario,
        accepted=total,
        completed=len(set(numbers)),
        failed=sum(r["status"] != "succeeded" for r in rows),
        lost=len(set(range(total)) - set(numbers)),
        counted_twice=max(counted - total, 0) + len(numbers) - len(set(numbers)),
        recovery_s=recovery_s,
    )


@dataclass
class Cluster:
    """Real workers on one prefix and queue, the API on the same, and their Redis."""

    redis_url: str
    prefix: str
    registry: Path
    logs: Path
    api_settings: ApiSettings
    worker_settings: dict[str, Any]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, prefix=self.prefix, ttl_seconds=3600)

    @property
    def batches(self) -> BatchStore:
        return BatchStore(self.redis, prefix=self.prefix, ttl_seconds=3600)

    @property
    def leases(self) -> LeaseBook:
        return LeaseBook(self.redis, prefix=self.prefix, lease_seconds=1)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(
        self, name: str, *, pool: str = "prefork", concurrency: int = 1, **extra: Any
    ) -> dict[str, Any]:
        """Start worker ``name`` and wait for its heartbeat with the models loaded."""
        env = worker_env(
            redis_url=self.redis_url,
            key_prefix=self.prefix,
            models_dir=self.registry,
            **{**self.worker_settings, **extra},
        )
        proc = start_worker(env, log_file=self.log(name), pool=pool, concurrency=concurrency)
        self.workers[name] = proc
        return wait_for_worker(
            self.jobs, proc, log_file=self.log(name), timeout_s=90, served="inclination"
        )

    def holders(self) -> dict[str, int | None]:
        """Unit → pid of the process holding its lease now."""
        book = self.leases
        return {u: (h.pid if (h := book.holder(u)) else None) for u in book.units()}

    def api(self, **overrides: Any) -> TestClient:
        return TestClient(
            create_app(self.api_settings.model_copy(update=overrides)),
            raise_server_exceptions=False,
        )

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{log_tail(self.log(name), 80)}" for name in self.workers
        )

    def close(self) -> None:
        for proc in self.workers.values():
            stop(proc)
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=500))
        keys += list(self.redis.scan_iter(match=f"_kombu.binding.{self.prefix}*", count=500))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


@contextmanager
def running_cluster(
    redis_url: str, tmp: Path, registry: Path, *, api: dict[str, Any] | None = None, **worker: Any
) -> Iterator[Cluster]:
    """A fresh prefix with fast-recovery worker settings; workers are started by the test."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    settings = ApiSettings(
        **{
            "redis_url": redis_url,
            "key_prefix": prefix,
            "celery_queue": prefix,
            "models_dir": registry,
            "max_wait_seconds": 5.0,
            "batch_chunk_rows": 4,
            **(api or {}),
        }
    )
    cluster = Cluster(
        redis_url=redis_url,
        prefix=prefix,
        registry=registry,
        logs=tmp,
        api_settings=settings,
        worker_settings={**FAST_RECOVERY, **worker},
    )
    with ExitStack() as stack:
        stack.callback(cluster.close)
        yield cluster
