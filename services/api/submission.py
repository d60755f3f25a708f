"""Turning a request into a stored, enqueued job: the logic behind ``POST /v1/jobs``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

import redis

from services.api.metrics import JOBS_SUBMITTED
from services.api.queue import JobQueue
from shared.errors import InvalidRequest, ServiceUnavailable, UnknownTask
from shared.jobstore import JobStore, new_job_id
from shared.preprocessing import inspect_image
from shared.registry import RegistryReader
from shared.resolver import get_resolver
from shared.schemas import ImageInput, Job
from shared.targets import resolve_target
from shared.taskdefs import load_task_definitions

__all__ = [
    "parse_task_list",
    "parse_versions",
    "check_versions",
    "resolve_tasks",
    "submit_image",
    "submit_target",
]


#: Adds a caller's bookkeeping for a new job id (or, with undo, its removal) to a pipeline.
Claim = Callable[[redis.client.Pipeline, str, bool], None]

_TASK_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
# ASCII digits only: str.isdigit() also accepts '²', which int() then refuses.
_VERSION = re.compile(r"^[0-9]{1,9}$")


def _task_name(text: str) -> str:
    name = text.strip().lower()
    if not _TASK_NAME.match(name):
        raise InvalidRequest(
            f"{text.strip()[:64]!r} is not a task name: use lowercase letters, digits and '-', "
            "e.g. inclination (GET /v1/tasks lists them)."
        )
    return name


def parse_task_list(values: Iterable[str] | None) -> list[str]:
    """Accept ``tasks`` repeated or comma-separated; keep order, drop duplicates.

    Raises
    ------
    InvalidRequest
        If a name cannot be a task name.
    """
    names: list[str] = []
    for value in values or []:
        for part in str(value).split(","):
            if part.strip() and (name := _task_name(part)) not in names:
                names.append(name)
    return names


def parse_versions(value: str | None) -> dict[str, int]:
    """Parse pins such as ``"inclination=1,morphology=3"``.

    Raises
    ------
    InvalidRequest
        If a pin is not ``task=integer``.
    """
    pins: dict[str, int] = {}
    for part in (value or "").split(","):
        if not part.strip():
            continue
        task, sep, version = part.partition("=")
        if not sep or not _VERSION.match(version.strip()):
            raise InvalidRequest(
                f"Version pin {part.strip()[:80]!r} is not of the form task=version with a "
                "version number of digits 0-9, e.g. inclination=1."
            )
        pins[_task_name(task)] = int(version)
    return pins


def check_versions(pins: dict[str, int]) -> dict[str, int]:
    """Check pins that arrived as JSON (``{"inclination": 1}``) like parsed ones.

    Raises
    ------
    InvalidRequest
        A task name that cannot be one, or a version that is not a positive integer.
    """
    checked: dict[str, int] = {}
    for task, version in pins.items():
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 10**9:
            raise InvalidRequest(f"The version pinned for {task[:64]!r} must be a positive integer.")
        checked[_task_name(task)] = version
    return checked


def resolve_tasks(
    registry: RegistryReader, requested: list[str], pins: dict[str, int]
) -> list[str]:
    """Check that every requested task is defined and served; default to all served.

    Raises
    ------
    UnknownTask
        For a task nobody defined or no model serves (the problem lists what is served).
    InvalidRequest
        For a pin on a task not requested, or a version that does not exist.
    """
    served = [t for t in registry.tasks() if t in load_task_definitions()]
    tasks = requested or served
    if not tasks:
        raise UnknownTask("No model is published yet, so no task can be served.", served_tasks=[])
    for name in tasks:
        if name not in served:
            raise UnknownTask(
                f"The task {name!r} is not served. Ask for one of: {', '.join(served) or 'none'}.",
                served_tasks=served,
            )
    for name, version in pins.items():
        if name not in tasks:
            raise InvalidRequest(f"A version is pinned for {name!r}, which the job does not ask for.")
        available = registry.versions(name)
        if version not in available:
            raise InvalidRequest(
                f"{name!r} has no version {version}; available: {available}.",
                available=available,
            )
    return tasks


def submit_image(
    *,
    store: JobStore,
    queue: JobQueue,
    registry: RegistryReader,
    data: bytes,
    filename: str | None,
    content_type: str | None,
    tasks: list[str],
    pins: dict[str, int],
    max_pixels: int,
    idempotency_key: str | None,
    claim: Claim | None = None,
) -> tuple[Job, bool]:
    """Validate an upload, store it with a new job record and enqueue it.

    ``claim(pipe, job_id, undo)`` adds the caller's bookkeeping for the new job (its
    owner, its key's count of unfinished jobs) to the transaction that stores the
    record, so nobody ever sees the record without its owner; with ``undo`` it adds
    the removal, for a job that is not kept (an earlier one had the Idempotency-Key).

    Returns
    -------
    (job, created)
        ``created`` is False when the idempotency key named an earlier job.
    """
    tasks = resolve_tasks(registry, tasks, pins)
    # Header only: bombs and non-images are refused here; pixels are decoded by the worker.
    info = inspect_image(data, max_pixels=max_pixels)
    job = Job(
        id=new_job_id(),
        tasks=tasks,
        versions=pins,
        input=ImageInput(
            filename=filename,
            content_type=content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            format=info.format,
            width=info.width,
            height=info.height,
        ),
    )
    return _store_and_enqueue(
        store, queue, job, data, idempotency_key, claim,
        same=lambda earlier: earlier.input.sha256 == job.input.sha256,
    )


def submit_target(
    *,
    store: JobStore,
    queue: JobQueue,
    registry: RegistryReader,
    target: dict[str, object],
    tasks: list[str],
    pins: dict[str, int],
    idempotency_key: str | None,
    claim: Claim | None = None,
) -> tuple[Job, bool]:
    """Resolve a catalogued object or position (404 with suggestions if unknown) and enqueue it.

    ``claim`` as for :func:`submit_image`.
    """
    tasks = resolve_tasks(registry, tasks, pins)
    job = Job(id=new_job_id(), tasks=tasks, versions=pins, input=resolve_target(target, get_resolver()))
    return _store_and_enqueue(
        store, queue, job, None, idempotency_key, claim,
        same=lambda earlier: earlier.input.query == target,
    )


def _store_and_enqueue(
    store: JobStore,
    queue: JobQueue,
    job: Job,
    payload: bytes | None,
    idempotency_key: str | None,
    claim: Claim | None,
    *,
    same: Callable[[Job], bool],
) -> tuple[Job, bool]:
    # Record, payload, Idempotency-Key, owner and count: one transaction, one round trip.
    also = (lambda pipe, undo: claim(pipe, job.id, undo)) if claim is not None else None
    stored = store.create(job, payload, idempotency_key=idempotency_key, also=also)
    if stored.id != job.id:
        if stored.input.kind != job.input.kind or not same(stored):
            raise InvalidRequest(
                "This Idempotency-Key was used for a different request; use a new key.",
                earlier_job=stored.id,
            )
        return stored, False
    try:
        queue.enqueue_predict(job.id)
    except ServiceUnavailable as exc:
        # Never leave a job queued that no worker will ever see, nor its key taken: the
        # client's retry with the same Idempotency-Key must make a new job.
        if idempotency_key is not None:
            store.forget_idempotency_key(idempotency_key, job.id)
        store.fail(job.id, exc)
        raise
    JOBS_SUBMITTED.labels(kind=job.input.kind).inc()
    return stored, True
