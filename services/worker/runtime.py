"""What one worker process holds: job and batch stores, registry, ONNX sessions, image
sources (cutout provider, URL fetcher), the heartbeat, and the leases on the work it runs.

Built lazily on first use in the process that runs tasks (never at import, and
never shared across a fork: a child builds its own).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import current_app

from services.worker.heartbeat import Heartbeat
from services.worker.imaging import ImageSources
from services.worker.microbatch import MicroBatcher
from services.worker.recovery import LeaseKeeper, RunningWork, Sweeper
from services.worker.sessions import SessionCache
from services.worker.settings import WorkerSettings
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.leases import LeaseBook
from shared.registry import RegistryReader

__all__ = ["WorkerRuntime", "get_runtime", "stop_runtime"]

logger = logging.getLogger(__name__)


class WorkerRuntime:
    """The per-process state the predict task works with.

    Parameters
    ----------
    settings
        Redis, registry, ONNX Runtime and heartbeat settings.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.started_at = time.time()
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
        )
        self.store = JobStore(
            client, prefix=settings.key_prefix, ttl_seconds=settings.job_ttl_seconds
        )
        self.batches = BatchStore(
            client, prefix=settings.key_prefix, ttl_seconds=settings.job_ttl_seconds
        )
        self.registry = RegistryReader(settings.models_dir)
        self.sessions = SessionCache(
            self.registry,
            providers=settings.available_providers(),
            intra_op_threads=settings.threads_per_process(),
            spinning=settings.spinning(),
            memory_arena=settings.onnx_memory_arena,
            optimization=settings.onnx_graph_optimization,
            fuse=settings.fuse_members,
            poll_seconds=settings.registry_poll_seconds,
            pinned_cached=settings.pinned_versions_cached,
        )
        self.leases = LeaseBook(
            client, prefix=settings.key_prefix, lease_seconds=settings.lease_seconds
        )
        self.work = RunningWork(self.leases, pid=self.pid)
        # Single-image jobs of this process run their ensembles together when several
        # are here at once (a threads pool); see services/worker/microbatch.py.
        self.batcher = MicroBatcher(
            max_size=settings.microbatch_max_size,
            max_wait_s=settings.microbatch_max_wait_ms / 1000.0,
            max_batch_size=settings.max_batch_size,
            timeout_s=float(settings.task_soft_time_limit_seconds),
        )
        # Ready once the models are loaded: /readyz counts no worker before that.
        self.ready = not settings.warm_up
        self.hostname: str | None = None
        self._heartbeat: Heartbeat | None = None
        self._keeper: LeaseKeeper | None = None
        self._lock = threading.Lock()
        self._images: ImageSources | None = None
        self._images_lock = threading.Lock()

    @property
    def images(self) -> ImageSources:
        """The cutout provider and URL fetcher, built on first use, once per process."""
        with self._images_lock:
            if self._images is None:
                self._images = ImageSources(self.settings)
            return self._images

    def close_images(self) -> None:
        """Release the image sources' connections (worker shutdown)."""
        with self._images_lock:
            if self._images is not None:
                self._images.close()
                self._images = None

    def describe(self) -> dict[str, Any]:
        """The heartbeat record: who this process is and what it serves."""
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            # A prefork child's parent is the worker's main process.
            "ppid": os.getppid(),
            "time": time.time(),
            "started_at": self.started_at,
            "queue": self.settings.celery_queue,
            "ready": self.ready,
            "served": self.sessions.served(),
            "refused": self.sessions.refused(),
            "running": len(self.work.units()),
            "providers": self.sessions.loaded_providers(),
            "max_batch_size": self.settings.max_batch_size,
            "microbatches": self.batcher.figures(),
        }

    def start_heartbeat(self, hostname: str) -> bool:
        """Start beating as ``hostname`` (once per process); False if already beating."""
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.alive:
                return False
            self.hostname = hostname
            self._heartbeat = Heartbeat(
                self.store,
                f"{hostname}/{self.pid}",
                self.describe,
                interval=self.settings.heartbeat_interval_seconds,
                ttl=self.settings.heartbeat_ttl_seconds,
                housekeeping=self.sessions.refresh,
                prepare=self._warm_up if self.settings.warm_up else None,
            )
            self._heartbeat.start()
            self._keeper = LeaseKeeper(
                self.work, self.sweeper(), renew_seconds=self.settings.lease_renew_seconds
            )
            self._keeper.start()
            logger.info("Worker %s/%d: heartbeat and leases started.", hostname, self.pid)
            return True

    def sweeper(self) -> Sweeper:
        """The sweeper, sending re-enqueued work through this worker's Celery app."""
        app = current_app._get_current_object()

        def send(name: str, kwargs: dict[str, Any], queue: str) -> None:
            app.send_task(name, kwargs=kwargs, queue=queue)

        return Sweeper(
            self.leases,
            self.store,
            self.batches,
            send,
            interval_seconds=self.settings.sweep_interval_seconds,
            default_queue=self.settings.celery_queue,
        )

    def _warm_up(self) -> None:
        try:
            self.sessions.warm_up()
        finally:
            # Even a task that cannot be served must not hold the others back; the
            # heartbeat says what is served and what was refused.
            self.ready = True

    def stop_heartbeat(self) -> None:
        """Stop beating and remove the key, so the API stops counting this process."""
        with self._lock:
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            if self._heartbeat is not None:
                self._heartbeat.stop(forget=True)
                self._heartbeat = None


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: WorkerSettings) -> WorkerRuntime:
    """This process's runtime for ``settings``, built on first use.

    A forked child (prefork pool) or other settings get a fresh one: sockets and
    sessions are never shared across processes.
    """
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid() or _runtime.settings is not settings:
            _runtime = WorkerRuntime(settings)
        return _runtime


def stop_runtime() -> None:
    """Stop this process's heartbeat and close its connections, if it built a runtime."""
    with _runtime_lock:
        runtime = _runtime if _runtime is not None and _runtime.pid == os.getpid() else None
    if runtime is not None:
        runtime.stop_heartbeat()
        runtime.close_images()
