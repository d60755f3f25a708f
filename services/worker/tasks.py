"""The predict task and the worker signals that start and stop the heartbeat.

The task is thin: mark the job running, read its payload, preprocess once per input
spec, run each task's ensemble, store the answer. Every outcome ends in the job
record: a client mistake or a broken model as a readable ``failed``, a bug as a
generic internal problem naming the exception type. Only Redis connection errors
are retried (with back-off and a cap); a redelivered job that already ended is
left alone, so delivery at least once never yields two answers.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Any

import numpy as np
import redis
from celery import Celery, Task, current_app, shared_task, signals
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from services.worker.inference import predict as predict_images
from services.worker.runtime import WorkerRuntime, get_runtime, stop_runtime
from services.worker.settings import WorkerSettings, get_settings
from shared.errors import InvalidRequest, JobNotFound, SkyserveError, UnknownTask
from shared.messages import PREDICT_TASK
from shared.preprocessing import preprocess
from shared.schemas import TERMINAL_STATUSES, ImageInput, Job, JobResult, TaskResult

__all__ = ["TRANSIENT_ERRORS", "answer_job", "predict"]

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
    store = runtime.store
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
        return store.succeed(job_id, result).status.value
    except JobNotFound:
        logger.warning("Job %s no longer exists (expired or deleted); nothing to do.", job_id)
        return "missing"
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        if retries >= settings.transient_retries:
            # Ends in PredictTask.on_failure, which fails the job if Redis is back by then.
            logger.error("Job %s: Redis unreachable (%s) after %d retries.", job_id, exc, retries)
            raise
        countdown = min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)
        logger.warning(
            "Job %s: Redis unreachable (%s); retry %d in %.1f s.",
            job_id,
            exc,
            retries + 1,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.transient_retries)


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
    """Run every task a single-image job asks for.

    Parameters
    ----------
    runtime
        The process's store, registry and sessions.
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
        InvalidImage, ImageTooLarge, UnsupportedMediaType, JobNotFound (payload gone).
    """
    settings = runtime.settings
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round((now - since) * 1000.0, 3)
        return now

    names = _requested_tasks(runtime, job)
    if not isinstance(job.input, ImageInput):
        raise InvalidRequest(
            "This worker answers uploaded images only; jobs naming a catalog target "
            "cannot be answered yet. Upload the image instead."
        )
    definitions = runtime.sessions.task_definitions
    models = {name: runtime.sessions.get(name, job.versions.get(name)) for name in names}
    mark = lap("load_models", started)
    payload = runtime.store.payload(job.id)
    mark = lap("read_payload", mark)

    # One decode-and-resize per distinct input spec, shared by the tasks that use it.
    inputs: dict[str, np.ndarray] = {}
    for model in models.values():
        key = model.manifest.input.model_dump_json()
        if key not in inputs:
            array = preprocess(payload, model.manifest.input, max_pixels=settings.max_image_pixels)
            inputs[key] = array[np.newaxis]
    mark = lap("preprocess", mark)

    answers: dict[str, TaskResult] = {}
    for name, model in models.items():
        images = inputs[model.manifest.input.model_dump_json()]
        (answers[name],) = predict_images(
            definitions[name], model, images, max_batch_size=settings.max_batch_size
        )
        mark = lap(f"infer:{name}", mark)
    lap("total", started)
    return JobResult(
        tasks=answers,
        models={name: model.version for name, model in models.items()},
        timings_ms=timings,
    )


def _requested_tasks(runtime: WorkerRuntime, job: Job) -> list[str]:
    """The job's task names, in order and without repeats; each must be defined."""
    names = list(dict.fromkeys(job.tasks))
    if not names:
        raise InvalidRequest("The job names no task. Ask for at least one, e.g. 'inclination'.")
    defined = runtime.sessions.task_definitions
    unknown = [name for name in names if name not in defined]
    if unknown:
        raise UnknownTask(
            f"No such task: {', '.join(map(repr, unknown))}.",
            served_tasks=runtime.registry.tasks(),
        )
    return names


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
