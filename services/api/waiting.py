"""Reading job records without a thread hop, and waiting for a job to end without polling.

``GET /v1/jobs/{id}?wait=`` used to re-read the record every 50 ms: a median 35 ms of
pure waiting after the worker had finished. Here one pub/sub connection per API
process listens to every job's end (the worker publishes on
``<prefix>:done:<id>`` in the same transaction that writes the final record, see
:mod:`shared.jobstore`), and each waiting request sleeps on an :class:`asyncio.Event`
that the listener sets. No thread and no connection per waiter.

A notice can be missed (the listener reconnecting after a Redis restart, a message
lost with its connection), so a waiter never trusts it alone: it registers before it
first reads the record (a job that ends in between is seen by that read), and it
re-reads the record every ``fallback_seconds`` and at its deadline whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from services.api.metrics import WAIT_WAKEUPS
from shared.errors import JobNotFound
from shared.jobstore import DONE_CHANNEL
from shared.schemas import TERMINAL_STATUSES, Job, JobStatus

__all__ = ["JobReader", "JobWaiter", "status_of"]

log = logging.getLogger("skyserve.api.waiting")


class JobReader:
    """Job records read on the event loop (redis.asyncio), the hot path of ``GET``."""

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    async def get(self, job_id: str) -> Job:
        """Load a job record.

        Raises
        ------
        JobNotFound
        """
        raw, _ = await self.get_raw(job_id)
        return Job.model_validate_json(raw)

    async def get_raw(self, job_id: str) -> tuple[bytes, JobStatus]:
        """A job record's JSON as stored, and its status (read without parsing the rest).

        Raises
        ------
        JobNotFound
        """
        raw = await self.redis.get(f"{self.prefix}:job:{job_id}")
        if raw is None:
            raise JobNotFound(f"There is no job {job_id!r} (it may have expired).")
        return raw, status_of(raw)


#: A record as ``Job.model_dump_json`` writes it opens with its id and status.
_STATUS = re.compile(rb'^\{"id":"[0-9a-f]*","status":"([a-z]+)"')


def status_of(raw: bytes) -> JobStatus:
    """The status of a stored job record, read from its opening bytes when it has the
    usual shape, else by parsing it."""
    match = _STATUS.match(raw)
    if match is not None:
        try:
            return JobStatus(match.group(1).decode())
        except ValueError:
            pass
    return Job.model_validate_json(raw).status


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class JobWaiter:
    """Wakes requests waiting on a job when it ends; see the module docstring.

    Parameters
    ----------
    client
        A redis.asyncio client for the listener's connection (no socket timeout: the
        subscription is idle between jobs).
    prefix
        The key prefix the job store publishes under.
    fallback_seconds
        How often a waiter re-reads the record when no notice arrives.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str, fallback_seconds: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.fallback_seconds = fallback_seconds
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        """Start the listener (it reconnects by itself; a Redis that is down is fine)."""
        self._task = asyncio.create_task(self._listen(), name="skyserve-job-waiter")

    async def stop(self) -> None:
        """Stop the listener and close its connection."""
        # Bounded: a listener stuck closing its connection must not hang the API's
        # shutdown (seen once in the test suite: the lifespan never returned).
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, timeout=2.0)
            except (TimeoutError, asyncio.CancelledError, Exception):
                pass
            self._task = None
        try:
            await asyncio.wait_for(self.redis.aclose(), timeout=2.0)
        except (TimeoutError, Exception):
            log.warning("Job notices: the listener's connection did not close in 2 s.")

    async def _listen(self) -> None:
        pattern = f"{_glob_escape(self.prefix)}:{DONE_CHANNEL}:*"
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                self.listening.set()
                backoff = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    job_id = message["channel"].decode().rpartition(":")[2]
                    for event in self._waiting.get(job_id, ()):
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or restarting: waiters fall back to re-reads
                log.warning("Job notices: listener lost (%s); reconnecting in %.1f s.", exc, backoff)
            finally:
                self.listening.clear()
                try:
                    await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
                except Exception:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def wait(
        self,
        job_id: str,
        read: Callable[[str], Awaitable[tuple[bytes, JobStatus]]],
        timeout: float,
    ) -> tuple[bytes, JobStatus]:
        """The job's record (``read``'s answer: JSON and status) once it has ended, or as
        it stands after ``timeout`` seconds.

        Raises
        ------
        JobNotFound
            From ``read``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        # Registered before the first read: a job ending in between is seen by the read.
        self._waiting.setdefault(job_id, set()).add(event)
        try:
            job = await read(job_id)
            while job[1] not in TERMINAL_STATUSES:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, self.fallback_seconds))
                    WAIT_WAKEUPS.labels(by="notice").inc()
                except TimeoutError:
                    WAIT_WAKEUPS.labels(by="timer").inc()
                event.clear()
                job = await read(job_id)
            return job
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[job_id]

    def waiting(self) -> int:
        """Requests waiting now (for tests and metrics)."""
        return sum(len(v) for v in self._waiting.values())

