"""The predict and predict-chunk tasks, and the worker signals that start and stop the heartbeat.

The tasks are thin. ``predict`` marks the job running, gets its image (the upload, or
for a target the oriented cutout, kept as the image the models saw) and hands the
bytes to :mod:`services.worker.answers`; its ensembles run alone or, when several
jobs are in one process at once (a threads pool), together with theirs
(:mod:`services.worker.microbatch`), each job still storing, acknowledging and
retrying on its own. ``predict_chunk`` answers one chunk of a
batch through :mod:`services.worker.chunks` and records it once. Every outcome ends
in a record: a client mistake or a broken model as a readable ``failed``, a bug as a
generic internal problem naming the exception type. Only Redis connection errors
are retried (with back-off and a cap); a redelivered job that already ended, or a
chunk already recorded, is left alone, so delivery at least once never yields two
answers nor counts a batch's progress twice.

Each task runs its job or chunk under a lease (:mod:`services.worker.recovery`): a
second delivery of work that a live process is running is skipped, and work whose
whole worker died is re-enqueued when its lease runs out, in about a minute rather
than after the broker's visibility timeout.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Any

import redis
from celery import Celery, Task, current_app, shared_task, signals
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from services.worker.answers import Stopwatch, load_models, prepare
from services.worker.chunks import answer_rows, count_attempt, failed_rows
from services.worker.metrics import observe_chunk, observe_job
from services.worker.orientation import encode_png
from services.worker.runtime import WorkerRuntime, get_runtime, stop_runtime
from services.worker.settings import WorkerSettings, get_settings
from shared.errors import JobNotFound, SkyserveError
from shared.leases import chunk_unit, job_unit
from shared.messages import PREDICT_CHUNK_TASK, PREDICT_TASK
from shared.preprocessing import DecodedImage
from shared.schemas import TERMINAL_STATUSES, Batch, Job, JobResult, JobStatus, TargetInput
from shared.seen import seen_png

__all__ = ["TRANSIENT_ERRORS", "answer_job", "predict", "predict_chunk"]

logger = logging.getLogger(__name__)

# Errors worth another try: Redis (broker, job store and payloads) was briefly unreachable.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


def _settings(app: Celery) -> WorkerSettings:
    """The settings the worker app was built with (see ``celery_app.WorkerApp``)."""
    settings = getattr(app, "settings", None)
    return settings if isinstance(settings, WorkerSettings) else get_settings()


class PredictTask(Task):
    """Base of :func:`predict`: fails the job when the task dies outside its own handling.

    That happens on a hard time limit (the parent process calls ``on_failure`` after
    killing the child) and when the Redis retries run out.
    """

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = (kwargs or {}).get("job_id")
        if not job_id:
            return
        if isinstance(exc, TimeLimitExceeded):
            detail = (
                f"The job ran past the worker's time limit "
                f"({_settings(self.app).task_time_limit_seconds} s) and was stopped."
            )
        else:
            detail = f"The job could not be completed ({type(exc).__name__}); try again later."
        try:
            get_runtime(_settings(self.app)).store.fail(job_id, SkyserveError(detail))
        except Exception:  # Redis may be the reason we are here; nothing more to do
            logger.warning("Could not mark job %s failed.", job_id, exc_info=True)


@shared_task(
    name=PREDICT_TASK,
    bind=True,
    base=PredictTask,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def predict(self: PredictTask, job_id: str) -> str:
    """Answer one job; returns its final status (for the worker log only).

    Parameters
    ----------
    job_id
        The job record to answer (:class:`shared.messages.PredictMessage`).
    """
    settings = _settings(self.app)
    runtime = get_runtime(settings)
    try:
        with (
            runtime.batcher.preparing(),
            runtime.work.lease(job_unit(job_id), queue=_queue(self, settings)) as held,
        ):
            if not held:
                return "duplicate"
            return _run_job(runtime, job_id)
    except TRANSIENT_ERRORS as exc:
        _retry_with_backoff(self, exc, settings, f"Job {job_id}")
        raise  # retries used up: PredictTask.on_failure fails the job if Redis is back


def _run_job(runtime: WorkerRuntime, job_id: str) -> str:
    """Start, answer and record one job whose lease this process holds."""
    settings, store = runtime.settings, runtime.store
    try:
        job = store.start(job_id)
        if job.status in TERMINAL_STATUSES:
            logger.info("Job %s is already %s; not recomputing.", job_id, job.status.value)
            return job.status.value
        if job.attempts > settings.max_job_attempts:
            error = SkyserveError(
                f"The job was started {job.attempts - 1} times without finishing (its worker "
                "process died each time); it will not be tried again."
            )
            return store.fail(job_id, error).status.value
        try:
            result = answer_job(runtime, job)
        except SkyserveError as err:
            logger.info("Job %s failed: %s", job_id, err.detail)
            return store.fail(job_id, err).status.value
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception("Job %s hit an unexpected error.", job_id)
            return store.fail(job_id, _internal_problem(exc, settings)).status.value
        writing = time.perf_counter()
        final = store.succeed(job_id, result)
        observe_job(result.tasks, result.timings_ms, write_s=time.perf_counter() - writing)
        return final.status.value
    except JobNotFound:
        logger.warning("Job %s no longer exists (expired or deleted); nothing to do.", job_id)
        return "missing"


def _queue(task: Task, settings: WorkerSettings) -> str:
    """The queue this delivery came from (where a re-enqueued copy should go)."""
    info = task.request.delivery_info or {}
    return str(info.get("routing_key") or settings.celery_queue)


def _retry_with_backoff(task: Task, exc: Exception, settings: WorkerSettings, what: str) -> None:
    """After a transient error, raise Celery's Retry with back-off, or return when used up.

    Back-off is exponential with jitter, capped at 60 s; after
    ``settings.transient_retries`` retries it returns, and the caller re-raises so the
    task fails and its ``on_failure`` records the outcome.
    """
    retries = task.request.retries
    if retries >= settings.transient_retries:
        logger.error("%s: Redis unreachable (%s) after %d retries.", what, exc, retries)
        return
    countdown = min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)
    logger.warning(
        "%s: Redis unreachable (%s); retry %d in %.1f s.", what, exc, retries + 1, countdown
    )
    raise task.retry(exc=exc, countdown=countdown, max_retries=settings.transient_retries)


def _internal_problem(exc: Exception, settings: WorkerSettings) -> SkyserveError:
    """What a job that failed for a reason of ours (not the client's) tells its client."""
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = settings.task_soft_time_limit_seconds
        return SkyserveError(f"The job ran past the worker's time limit ({limit} s).")
    return SkyserveError(
        f"The worker hit an internal problem ({type(exc).__name__}) answering this job. "
        "It has been logged; submitting again may help."
    )


def answer_job(runtime: WorkerRuntime, job: Job) -> JobResult:
    """Run every task a single-image job asks for, on its upload or its target's cutout.

    A target's cutout is fetched with the process's provider, oriented by the
    object's position angle, and kept (``JobStore.put_seen_image``) as the image the
    models saw; an upload is kept the same way, decoded and padded to a square
    (:func:`shared.seen.seen_png`), since the upload itself leaves Redis when the job
    ends. From there both kinds of job take the same bytes-to-answers path
    (:mod:`services.worker.answers`) as every batch row.

    Parameters
    ----------
    runtime
        The process's stores, registry, sessions and image sources.
    job
        The job record (tasks, pinned versions, input).

    Returns
    -------
    JobResult
        Per-task answers, the versions that gave them and timings in milliseconds.

    Raises
    ------
    SkyserveError
        InvalidRequest, UnknownTask, UnknownModelVersion, ModelIntegrityError,
        InvalidImage, ImageTooLarge, UnsupportedMediaType, JobNotFound (payload gone),
        CutoutUnavailable, HostNotAllowed (target jobs).
    """
    settings = runtime.settings
    watch = Stopwatch()
    models = load_models(runtime, job.tasks, job.versions)
    watch.lap("load_models")
    if isinstance(job.input, TargetInput):
        cutout = runtime.images.cutout(job.input)  # decoded once, oriented: uint8 pixels
        runtime.store.put_seen_image(job.id, encode_png(cutout))
        image = DecodedImage(cutout)
        watch.lap("fetch_cutout")
    else:
        image = DecodedImage(runtime.store.payload(job.id), max_pixels=settings.max_image_pixels)
        watch.lap("read_payload")
    prepared = prepare(image, models, max_pixels=settings.max_image_pixels)
    watch.lap("preprocess")
    if not isinstance(job.input, TargetInput):
        # From the pixels the models were given: the upload is not decoded again.
        runtime.store.put_seen_image(job.id, seen_png(image, max_pixels=settings.max_image_pixels))
        watch.lap("seen_image")
    # Alone, or in one ensemble run with other jobs of this process (micro-batching).
    answers = runtime.batcher.answer(
        runtime.sessions.task_definitions, models, prepared, watch=watch
    )
    return JobResult(
        tasks=answers,
        models={name: model.version for name, model in models.items()},
        timings_ms=watch.total(),
    )


# -- batches: one task per chunk of rows --------------------------------------------------


class ChunkTask(Task):
    """Base of :func:`predict_chunk`: records the chunk failed when the task dies outside
    its own handling (a hard time limit, Redis retries run out), so no row is lost."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        batch_id, index = (kwargs or {}).get("batch_id"), (kwargs or {}).get("chunk")
        if not batch_id or index is None:
            return
        settings = _settings(self.app)
        if isinstance(exc, TimeLimitExceeded):
            detail = (
                f"This row's chunk ran past the worker's time limit "
                f"({settings.task_time_limit_seconds} s) and was stopped."
            )
        else:
            detail = f"This row could not be completed ({type(exc).__name__}); try again later."
        try:
            batches = get_runtime(settings).batches
            rows = batches.chunk(batch_id, int(index))
            batches.record_chunk(batch_id, int(index), failed_rows(rows, SkyserveError(detail)))
        except Exception:  # Redis may be the reason we are here; nothing more to do
            logger.warning(
                "Could not record batch %s chunk %s failed.", batch_id, index, exc_info=True
            )


@shared_task(
    name=PREDICT_CHUNK_TASK,
    bind=True,
    base=ChunkTask,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def predict_chunk(self: ChunkTask, batch_id: str, chunk: int) -> str:
    """Answer one chunk of a batch and record it once; returns what happened (for the log).

    Parameters
    ----------
    batch_id, chunk
        Which rows (:class:`shared.messages.ChunkMessage`).
    """
    settings = _settings(self.app)
    runtime = get_runtime(settings)
    where = f"Batch {batch_id} chunk {chunk}"
    try:
        batch = runtime.batches.get(batch_id)
        if batch.status == JobStatus.CANCELLED:
            logger.info("%s: the batch is cancelled; not running it.", where)
            return "cancelled"
        if runtime.batches.has_result(batch_id, chunk):
            logger.info("%s is already recorded; not recomputing.", where)
            return "duplicate"
        unit = chunk_unit(batch_id, chunk)
        with runtime.work.lease(unit, queue=_queue(self, settings)) as held:
            if not held:
                return "duplicate"
            return _run_chunk(runtime, batch, chunk, where)
    except JobNotFound:
        logger.warning("%s no longer exists (expired or deleted); nothing to do.", where)
        return "missing"
    except TRANSIENT_ERRORS as exc:
        _retry_with_backoff(self, exc, settings, where)
        raise  # retries used up: ChunkTask.on_failure records the rows failed if it can


def _run_chunk(runtime: WorkerRuntime, batch: Batch, chunk: int, where: str) -> str:
    """Answer and record one chunk whose lease this process holds."""
    settings, batches = runtime.settings, runtime.batches
    try:
        if batches.has_result(batch.id, chunk):  # recorded while we waited for the lease
            return "duplicate"
        attempts = count_attempt(runtime, batch.id, chunk)
        rows = batches.chunk(batch.id, chunk)
    except JobNotFound:
        logger.warning("%s no longer exists (expired or deleted); nothing to do.", where)
        return "missing"
    if attempts > settings.max_job_attempts:
        results = failed_rows(
            rows,
            SkyserveError(
                f"This row's chunk was started {attempts - 1} times without finishing (its "
                "worker process died each time); it will not be tried again."
            ),
        )
    else:
        try:
            results = answer_rows(runtime, batch, rows)
        except SkyserveError as err:
            logger.info("%s failed as a whole: %s", where, err.detail)
            results = failed_rows(rows, err)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception("%s hit an unexpected error.", where)
            results = failed_rows(rows, _internal_problem(exc, settings))
    recorded = batches.record_chunk(batch.id, chunk, results)
    if recorded:
        observe_chunk(batch.tasks, sum(r.status == "succeeded" for r in results))
    return "recorded" if recorded else "duplicate"


# -- heartbeat: one per process that runs tasks ------------------------------------------


@signals.worker_process_init.connect
def _start_heartbeat_in_child(sender: object = None, **_: Any) -> None:
    # Celery 5.7 sends this in every prefork child and, for the solo pool, in the
    # main process; the sender is the worker's hostname.
    app = current_app._get_current_object()
    get_runtime(_settings(app)).start_heartbeat(str(sender or socket.gethostname()))


@signals.worker_ready.connect
def _start_heartbeat_in_main(sender: Any = None, **_: Any) -> None:
    # Pools that run tasks in the main process but send no worker_process_init (threads,
    # gevent) beat from here; prefork children beat for themselves, the parent does not.
    if sender is None or isinstance(getattr(sender, "pool", None), PreforkPool):
        return
    get_runtime(_settings(sender.app)).start_heartbeat(sender.hostname)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    stop_runtime()
