"""Prometheus metrics of the worker: jobs and chunks by outcome, time per stage, images per
task, ensemble batch sizes, work running now.

How they are served (chosen on purpose). A Celery worker runs its tasks in prefork
child processes that come and go (``worker_max_tasks_per_child``, a killed child is
replaced), so a port per process would be a moving target for Prometheus. Instead
each worker (the ``celery worker`` main process) serves one ``/metrics`` on
``SKYSERVE_WORKER_METRICS_PORT`` and reports all its children together through
prometheus_client's *multiprocess mode*: every process writes its samples to memory-
mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the main process adds them up when
scraped. The directory must be set before prometheus_client is first imported, so
this module sets it on import (``services.worker.celery_app`` imports it first): the
one in the environment, else a fresh temporary one per worker. A directory given
in the environment must be emptied before the worker starts (prometheus_client's
rule; compose gives each container a fresh one). With the port at 0 (the default)
nothing is served and the samples stay in each process.

A worker per host (``--concurrency`` = cores) is then one scrape target per host.
"""

# ruff: noqa: E402, I001  (the environment is set before prometheus_client is imported)
from __future__ import annotations

import os
import tempfile

_PORT_ENV = "SKYSERVE_WORKER_METRICS_PORT"
if int(os.environ.get(_PORT_ENV, "0") or 0) > 0 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Before prometheus_client is imported: it picks its value store on import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="skyserve-worker-metrics-")

import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

from celery import signals  # noqa: E402

from prometheus_client import (  # noqa: E402
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess  # noqa: E402

from shared.messages import PREDICT_CHUNK_TASK, PREDICT_TASK  # noqa: E402

__all__ = [
    "BATCH_SIZE",
    "IMAGES",
    "JOBS",
    "RUNNING",
    "STAGE_SECONDS",
    "TASK_SECONDS",
    "mark_process_dead",
    "observe_chunk",
    "observe_job",
    "observe_timings",
    "serve",
    "stage_of",
]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)

JOBS = Counter(
    "skyserve_worker_jobs_total",
    "Jobs (kind=job) and batch chunks (kind=chunk) the worker ended, by outcome: "
    "succeeded, failed, cancelled, duplicate (a redelivery left alone), missing, recorded.",
    ["kind", "outcome"],
)
RUNNING = Gauge(
    "skyserve_worker_jobs_running",
    "Jobs and chunks running now.",
    ["kind"],
    multiprocess_mode="livesum",
)
TASK_SECONDS = Histogram(
    "skyserve_worker_task_seconds",
    "Time a Celery task took in the worker, from start to its record written.",
    ["kind"],
    buckets=_SECONDS,
)
STAGE_SECONDS = Histogram(
    "skyserve_worker_stage_seconds",
    "Time per stage of a single-image job: load (models), fetch (upload or cutout), "
    "decode (preprocessing), inference (every task's ensemble), write (kept image, "
    "result record).",
    ["stage"],
    buckets=_SECONDS,
)
IMAGES = Counter(
    "skyserve_worker_images_total",
    "Images answered, by task (rate() of it is images/s per task).",
    ["task"],
)
#: Observed by the micro-batcher (services/worker/microbatch.py, helper branch
#: ``microbatch``), which defined it first: kept here exactly as it has it.
BATCH_SIZE = Histogram(
    "skyserve_worker_batch_size",
    "Single-image jobs answered by one ensemble run of a task (1: the job ran alone).",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

#: Stopwatch laps (services.worker.answers) → stage.
_STAGES = {
    "load_models": "load",
    "read_payload": "fetch",
    "fetch_cutout": "fetch",
    "preprocess": "decode",
    "seen_image": "write",
}


def stage_of(lap: str) -> str | None:
    """The stage a job's timing lap belongs to (None for the totals)."""
    if lap.startswith("infer:"):
        return "inference"
    return _STAGES.get(lap)


def observe_timings(timings_ms: Mapping[str, float]) -> None:
    """Add one job's laps (``JobResult.timings_ms``) to the per-stage histogram."""
    stages: dict[str, float] = {}
    for lap, ms in timings_ms.items():
        stage = stage_of(lap)
        if stage is not None:
            stages[stage] = stages.get(stage, 0.0) + ms / 1000.0
    for stage, seconds in stages.items():
        STAGE_SECONDS.labels(stage=stage).observe(seconds)


def serve(port: int) -> None:
    """Serve ``/metrics`` on ``port`` from this process, for it and all its children."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    start_http_server(port, registry=registry)


def mark_process_dead(pid: int) -> None:
    """Drop a finished child's live gauges (its counters and histograms still count)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)


def observe_job(tasks: Mapping[str, object], timings_ms: Mapping[str, float], *, write_s: float) -> None:
    """Count one answered single-image job: its stages (the record's write added to the
    ``write`` stage) and one image for each task it answered."""
    observe_timings({**timings_ms, "seen_image": timings_ms.get("seen_image", 0.0) + write_s * 1000.0})
    for task in tasks:
        IMAGES.labels(task=task).inc()


def observe_chunk(tasks: list[str], answered: int) -> None:
    """Count one recorded batch chunk: ``answered`` images for each task."""
    for task in tasks:
        IMAGES.labels(task=task).inc(answered)


# -- task outcomes and time, from Celery's signals (no code in the tasks themselves) ------

_KINDS = {PREDICT_TASK: "job", PREDICT_CHUNK_TASK: "chunk"}
_started: dict[str, float] = {}


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    kind = _KINDS.get(getattr(task, "name", ""))
    if kind is None or task_id is None:
        return
    _started[task_id] = time.perf_counter()
    RUNNING.labels(kind=kind).inc()


@signals.task_postrun.connect
def _task_ended(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    kind = _KINDS.get(getattr(task, "name", ""))
    if kind is None or task_id is None:
        return
    started = _started.pop(task_id, None)
    RUNNING.labels(kind=kind).dec()
    if started is not None:
        TASK_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
    outcome = retval if isinstance(retval, str) and state == "SUCCESS" else str(state or "unknown").lower()
    JOBS.labels(kind=kind, outcome=outcome).inc()


@signals.worker_init.connect
def _serve(sender: Any = None, **_: Any) -> None:
    # In the worker's main process, before the pool forks its children.
    settings = getattr(getattr(sender, "app", None), "settings", None)
    port = int(getattr(settings, "worker_metrics_port", 0) or 0)
    if port > 0:
        serve(port)


@signals.worker_process_shutdown.connect
def _child_gone(**_: Any) -> None:
    mark_process_dead(os.getpid())
