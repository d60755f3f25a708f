"""Enqueueing jobs for the workers, by task *name*: the API never imports worker code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from celery import Celery

from shared.errors import ServiceUnavailable
from shared.messages import PREDICT_CHUNK_TASK, PREDICT_TASK, ChunkMessage, PredictMessage
from shared.settings import SkyserveSettings

__all__ = ["JobQueue"]


class JobQueue:
    """A Celery client bound to the broker and queue in the settings."""

    def __init__(self, settings: SkyserveSettings) -> None:
        self.queue = settings.celery_queue
        self.celery = Celery("skyserve-api", broker=settings.redis_url, set_as_current=False)
        self.celery.conf.update(
            broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
            broker_connection_retry_on_startup=True,
            task_serializer="json",
            # Fail fast: an API request must not hang while the broker is down.
            broker_connection_timeout=3,
            broker_connection_max_retries=1,
        )

    def _send(self, name: str, kwargs: dict[str, object]) -> None:
        try:
            self.celery.send_task(
                name,
                kwargs=kwargs,
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except Exception as exc:  # kombu raises several transport-specific types
            raise _unavailable(exc) from exc

    def enqueue_predict(self, job_id: str) -> None:
        """Send one job to the workers.

        Raises
        ------
        ServiceUnavailable
            If the broker cannot be reached.
        """
        self._send(PREDICT_TASK, PredictMessage(job_id=job_id).model_dump())

    def enqueue_chunks(self, batch_id: str, chunks: int) -> None:
        """Send every chunk of a batch to the workers, reusing one broker connection.

        Raises
        ------
        ServiceUnavailable
            If the broker cannot be reached.
        """
        with self.chunk_sender(batch_id) as send:
            for index in range(chunks):
                send(index)

    @contextmanager
    def chunk_sender(self, batch_id: str) -> Iterator[Callable[[int], None]]:
        """A function that sends one chunk of ``batch_id`` (by index) to the workers, on
        one broker connection held while the batch's input is read, so each chunk is
        queued as soon as it is stored.

        Raises
        ------
        ServiceUnavailable
            If the broker cannot be reached (on entry or on a send).
        """
        try:
            context = self.celery.producer_or_acquire()
            producer = context.__enter__()
        except Exception as exc:  # kombu raises several transport-specific types
            raise _unavailable(exc) from exc

        def send(index: int) -> None:
            try:
                self.celery.send_task(
                    PREDICT_CHUNK_TASK,
                    kwargs=ChunkMessage(batch_id=batch_id, chunk=index).model_dump(),
                    queue=self.queue,
                    producer=producer,
                )
            except Exception as exc:  # kombu raises several transport-specific types
                raise _unavailable(exc) from exc

        try:
            yield send
        finally:
            context.__exit__(None, None, None)

    def close(self) -> None:
        """Release broker connections."""
        self.celery.close()


def _unavailable(exc: Exception) -> ServiceUnavailable:
    """The 503 for a failed send: a full Redis (noeviction) says so, as the job store does."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc):
        return ServiceUnavailable(
            "The job store is full; finished work is being cleared, try again shortly."
        )
    return ServiceUnavailable(f"The job queue is unreachable: {exc}")
