"""Worker settings: the shared ones plus ONNX Runtime, heartbeat, batching and Celery limits.

Every field is read from ``SKYSERVE_<FIELD>`` (lists as JSON, e.g.
``SKYSERVE_ONNX_PROVIDERS='["CPUExecutionProvider"]'``).

Variables (type, default):

- ``SKYSERVE_ONNX_PROVIDERS`` (list[str], ``["CUDAExecutionProvider", "CPUExecutionProvider"]``)
- ``SKYSERVE_INTRA_OP_THREADS`` (int, 0 = cores / ``SKYSERVE_WORKER_PROCESSES``)
- ``SKYSERVE_WORKER_PROCESSES`` (int, 1: processes running ONNX Runtime on this host, all replicas;
  replicas x concurrency with the prefork pool, replicas with the threads pool)
- ``SKYSERVE_ONNX_SPINNING`` (bool or unset; unset = spin only with one worker process)
- ``SKYSERVE_ONNX_MEMORY_ARENA`` (bool, true)
- ``SKYSERVE_ONNX_GRAPH_OPTIMIZATION`` (``disable|basic|extended|all``, ``all``)
- ``SKYSERVE_FUSE_MEMBERS`` (bool, true: one fused graph per version, see shared/fused.py)
- ``SKYSERVE_REGISTRY_POLL_SECONDS`` (float, 30)
- ``SKYSERVE_HEARTBEAT_INTERVAL_SECONDS`` (float, 5)
- ``SKYSERVE_HEARTBEAT_TTL_SECONDS`` (int, 20)
- ``SKYSERVE_MAX_BATCH_SIZE`` (int, 32)
- ``SKYSERVE_MICROBATCH_MAX_SIZE`` (int, 16; 1 = micro-batching off)
- ``SKYSERVE_MICROBATCH_MAX_WAIT_MS`` (float, 3)
- ``SKYSERVE_PINNED_VERSIONS_CACHED`` (int, 2)
- ``SKYSERVE_WARM_UP`` (bool, true)
- ``SKYSERVE_TASK_SOFT_TIME_LIMIT_SECONDS`` (int, 300)
- ``SKYSERVE_TASK_TIME_LIMIT_SECONDS`` (int, 330)
- ``SKYSERVE_TRANSIENT_RETRIES`` (int, 5)
- ``SKYSERVE_MAX_JOB_ATTEMPTS`` (int, 8)
- ``SKYSERVE_FETCH_THREADS`` (int, 8)
- ``SKYSERVE_LEASE_SECONDS`` (float, 60)
- ``SKYSERVE_LEASE_RENEW_SECONDS`` (float, 10)
- ``SKYSERVE_SWEEP_INTERVAL_SECONDS`` (float, 20)
- ``SKYSERVE_WORKER_METRICS_PORT`` (int, 0 = off): ``/metrics`` of the worker and all its
  processes (see :mod:`services.worker.metrics`)
- ``SKYSERVE_CUTOUT_PROVIDER`` (sdss | legacy | http | local | none, ``sdss``),
  ``SKYSERVE_CUTOUT_URL_TEMPLATE``, ``SKYSERVE_CUTOUT_ALLOWED_HOSTS``,
  ``SKYSERVE_CUTOUT_TIMEOUT_SECONDS`` (10), ``SKYSERVE_CUTOUT_RETRIES`` (2),
  ``SKYSERVE_CUTOUT_BACKOFF_SECONDS`` (0.5), ``SKYSERVE_CUTOUT_PIXELS`` (256),
  ``SKYSERVE_CUTOUT_MAX_BYTES`` (8 MiB), ``SKYSERVE_CUTOUT_CACHE_DIR``,
  ``SKYSERVE_CUTOUT_ARCHIVE_DIR``, ``SKYSERVE_CUTOUT_ALLOW_PRIVATE_ADDRESSES`` (false):
  where target jobs and image URLs get their pixels (:mod:`services.worker.cutouts`)

plus the shared ones of :class:`shared.settings.SkyserveSettings`.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import onnxruntime
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import SkyserveSettings

__all__ = ["WorkerSettings", "get_settings"]

logger = logging.getLogger(__name__)


class WorkerSettings(SkyserveSettings):
    """Configuration of ``services.worker`` (``SKYSERVE_*`` environment variables)."""

    onnx_providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference; those this "
        "onnxruntime build lacks are skipped (see :meth:`available_providers`).",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Threads one inference may use; 0: this host's cores divided by "
        "worker_processes (at least one), so the processes do not fight over cores.",
    )
    worker_processes: int = Field(
        default=1,
        gt=0,
        description="Processes running ONNX Runtime on this host (worker replicas x Celery "
        "concurrency with the prefork pool, replicas with the threads pool): sets the "
        "threads per process and whether threads spin.",
    )
    onnx_spinning: bool | None = Field(
        default=None,
        description="Let ONNX Runtime's idle threads spin (busy-wait) for the next piece of "
        "work; unset: only with one worker process, where spinning saves wake-ups, "
        "while with several it burns the cores the other processes need.",
    )
    onnx_memory_arena: bool = Field(
        default=True,
        description="Keep ONNX Runtime's CPU memory arena (reused buffers between runs).",
    )
    onnx_graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimisation level."
    )
    fuse_members: bool = Field(
        default=True,
        description="Run each version's members as one fused graph (shared/fused.py), "
        "checked against the members when loaded; false runs them one by one.",
    )
    registry_poll_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often a process looks for a newer published version of a task.",
    )
    heartbeat_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often a worker process writes its heartbeat."
    )
    heartbeat_ttl_seconds: int = Field(
        default=20, gt=0, description="How long a heartbeat counts once written."
    )
    max_batch_size: int = Field(
        default=32, gt=0, description="Most images (x test-time transforms) in one session run."
    )
    # Micro-batching of concurrent single-image jobs (services/worker/microbatch.py). It
    # needs a pool that runs several jobs in one process: `--pool threads --concurrency N`
    # with N >= microbatch_max_size; a prefork child runs one job at a time, so there each
    # job is its own run, exactly as with micro-batching off.
    microbatch_max_size: int = Field(
        default=16,
        ge=1,
        description="Most concurrent single-image jobs answered by one ensemble run per task; "
        "1 turns micro-batching off (each job runs its ensemble on its own).",
    )
    microbatch_max_wait_ms: float = Field(
        default=3.0,
        ge=0,
        le=1000,
        description="Longest a job waits for others to join its micro-batch. A job that is "
        "alone (no other job of this process is being prepared) does not wait at all.",
    )
    pinned_versions_cached: int = Field(
        default=2,
        ge=0,
        description="Versions that are not the latest kept loaded for requests that pin one.",
    )
    warm_up: bool = Field(
        default=True,
        description="Load the latest version of every published task when a process starts.",
    )
    task_soft_time_limit_seconds: int = Field(
        default=300,
        gt=0,
        description="A job running longer fails with a readable reason (prefork pool only).",
    )
    task_time_limit_seconds: int = Field(
        default=330,
        gt=0,
        description="A job running longer has its process killed (prefork pool only).",
    )
    transient_retries: int = Field(
        default=5, ge=0, description="Retries of a job after a Redis connection error."
    )
    max_job_attempts: int = Field(
        default=8,
        gt=0,
        description="Deliveries after which a job that keeps killing its worker is failed.",
    )

    fetch_threads: int = Field(
        default=8,
        gt=0,
        le=64,
        description="Concurrent image fetches (cutouts, image URLs, zip files) per batch chunk; "
        "the fetches are I/O bound, so more threads than cores pay off.",
    )

    # Cutouts and remote images (services/worker/cutouts.py): only the worker fetches
    # pixels, so the API and the trainer do not carry these.
    cutout_provider: Literal["sdss", "legacy", "http", "local", "none"] = Field(
        default="sdss",
        description="Where catalog/coordinate jobs get pixels: the SDSS SkyServer or Legacy "
        "Survey preset, 'http' with SKYSERVE_CUTOUT_URL_TEMPLATE, a 'local' archive folder, "
        "or 'none' (such jobs are refused).",
    )
    cutout_url_template: str | None = Field(
        default=None,
        description="Cutout URL with {ra} {dec} {scale} {size} {fov} {fov_deg} {fov_arcsec} "
        "{name} placeholders; overrides the preset's URL.",
    )
    cutout_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["skyserver.sdss.org", "www.legacysurvey.org"],
        description="Hosts the service may fetch images from (cutouts, redirects, user image "
        "URLs): comma-separated or a JSON list; 'host:port' pins a port, '*.domain' allows "
        "subdomains.",
    )
    cutout_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Connect/read timeout of each cutout request."
    )
    cutout_allow_private_addresses: bool = Field(
        default=False,
        description="Let outbound fetches reach private, loopback and link-local addresses "
        "(a host on the allowlist may still resolve to one). Off in deployments: it closes "
        "server-side request forgery through DNS; tests turn it on for their local servers.",
    )
    cutout_retries: int = Field(
        default=2, ge=0, description="Extra attempts after a timeout, connection error or 5xx."
    )
    cutout_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles on each further attempt."
    )
    cutout_pixels: int = Field(
        default=256, gt=0, le=2048, description="Side of the requested cutout, in pixels."
    )
    cutout_max_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest cutout or remote image accepted."
    )
    cutout_cache_dir: Path | None = Field(
        default=None, description="On-disk cache of fetched cutouts (files named by URL sha256)."
    )
    cutout_archive_dir: Path | None = Field(
        default=None,
        description="Folder of PNG/JPEG/FITS cutouts (by object name, or index.csv with "
        "file,ra,dec) for cutout_provider=local.",
    )

    @field_validator("cutout_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    # Recovery of work stranded by a dead worker (services/worker/recovery.py). A unit's
    # lease must survive a missed renewal or two (Redis blip, a busy moment), so it lasts
    # at least three renewals; the sum lease + sweep bounds how long work is stranded.
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a running job's or chunk's lease lasts after each renewal; "
        "after a whole worker dies its work is re-enqueued within about lease + sweep interval.",
    )
    lease_renew_seconds: float = Field(
        default=10.0, gt=0, description="How often a worker process renews its leases."
    )
    sweep_interval_seconds: float = Field(
        default=20.0,
        gt=0,
        description="How often (across all workers) expired leases are looked for and their "
        "work re-enqueued.",
    )

    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port on which the worker's main process serves Prometheus /metrics for "
        "itself and all its pool processes (multiprocess mode); 0 serves none.",
    )

    @model_validator(mode="after")
    def _check_limits(self) -> WorkerSettings:
        if self.lease_renew_seconds * 3 > self.lease_seconds:
            raise ValueError("lease_seconds must be at least three lease_renew_seconds")
        if self.heartbeat_ttl_seconds <= self.heartbeat_interval_seconds:
            raise ValueError("heartbeat_ttl_seconds must exceed heartbeat_interval_seconds")
        if self.task_soft_time_limit_seconds >= self.task_time_limit_seconds:
            raise ValueError("task_soft_time_limit_seconds must be below task_time_limit_seconds")
        if self.task_time_limit_seconds >= self.visibility_timeout_seconds:
            # Otherwise Redis hands a job that is still running to a second worker.
            raise ValueError("task_time_limit_seconds must be below visibility_timeout_seconds")
        if self.max_job_attempts <= self.transient_retries:
            raise ValueError("max_job_attempts must exceed transient_retries")
        return self

    def threads_per_process(self) -> int:
        """ONNX Runtime intra-op threads for one process: the setting, or cores / processes."""
        if self.intra_op_threads:
            return self.intra_op_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.worker_processes)

    def spinning(self) -> bool:
        """Whether ONNX Runtime's threads spin: the setting, else only with one process."""
        return self.worker_processes == 1 if self.onnx_spinning is None else self.onnx_spinning

    def available_providers(self) -> list[str]:
        """The preferred providers this onnxruntime build has, CPU as the last resort."""
        available = set(onnxruntime.get_available_providers())
        chosen = [p for p in self.onnx_providers if p in available]
        if not chosen:
            logger.warning(
                "None of the ONNX providers %s is available (have %s); using the CPU.",
                self.onnx_providers,
                sorted(available),
            )
            chosen = ["CPUExecutionProvider"]
        return chosen


@lru_cache
def get_settings() -> WorkerSettings:
    """Process-wide worker settings, read once from the environment."""
    return WorkerSettings()
