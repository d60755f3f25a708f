"""The worker's Celery app, built from settings; run it with
``celery -A services.worker.celery_app worker``.

Only configuration lives here. The task module (``services.worker.tasks``) is
imported by the worker through ``include`` and reads the settings the app carries.
"""

# ruff: noqa: I001  (services.worker.metrics must be imported first)
from __future__ import annotations

# First: it chooses prometheus_client's multi-process store before anything imports it.
from services.worker import metrics as _metrics  # noqa: F401  (worker /metrics)

from celery import Celery

from services.worker import logs as _logs  # noqa: F401  (log format and job ids on every line)
from services.worker.settings import WorkerSettings, get_settings

__all__ = ["WorkerApp", "app", "create_celery_app"]


class WorkerApp(Celery):
    """A Celery app that carries the :class:`WorkerSettings` it was built from."""

    settings: WorkerSettings


def create_celery_app(settings: WorkerSettings) -> WorkerApp:
    """Build the worker's Celery app.

    Parameters
    ----------
    settings
        Broker URL, queue, visibility timeout and time limits come from here.

    Returns
    -------
    WorkerApp
        The app, with ``app.settings`` set for the tasks.
    """
    app = WorkerApp("skyserve-worker", broker=settings.redis_url, include=["services.worker.tasks"])
    app.settings = settings
    app.conf.update(
        # At-least-once delivery that survives a killed worker: a message is acknowledged
        # only after the task ends, and a task whose process died is requeued rather
        # than acknowledged. Safe because a job is idempotent: JobStore never overwrites
        # a finished or cancelled job, so a redelivery cannot produce a second answer.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # With late acks every prefetched message is held (unacked) by this worker;
        # a multiplier of 1 makes each process reserve one job at a time, so a long
        # job does not hold others back that an idle worker could run.
        worker_prefetch_multiplier=1,
        # Redis redelivers an unacknowledged message after this long; it exceeds the
        # longest job (task_time_limit is checked to be below it in the settings), so a
        # running job is not handed to a second worker. It is only the backstop: a
        # running job or chunk whose whole worker died is re-enqueued much sooner, when
        # its lease runs out (services/worker/recovery.py). Unacknowledged messages are
        # looked for every 10 s (kombu's default scans only every 10th time).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # The job record in Redis is the result; a result backend would store it twice.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=settings.celery_queue,
        task_create_missing_queues=True,
        # Soft limit: the task fails the job with a readable reason. Hard limit: the child
        # is killed and the task's on_failure (run by the parent) fails the job. Only the
        # prefork pool enforces them; the solo pool cannot interrupt a running task.
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        # After a lost broker connection the unacknowledged jobs are redelivered anyway;
        # cancelling the copies still running avoids computing them twice (Celery 6's default).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Sessions and decoded images make a process grow; recycle it now and then.
        worker_max_tasks_per_child=10_000,
        # Keep a deployment's own logging configuration (Celery still logs to stderr).
        worker_hijack_root_logger=False,
    )
    return app


app = create_celery_app(get_settings())
