"""Getting stranded work going again: leases held while a unit runs, and the sweeper.

Every task-running process (a prefork child, or the solo worker) holds a lease
(:mod:`shared.leases`) on the job or chunk it runs and renews it from a daemon thread
every ``lease_renew_seconds``. The same thread sweeps: about once every
``sweep_interval_seconds`` across all workers (a Redis lock elects the process that
does it), it re-enqueues every unit whose lease ran out and that has not ended.

What recovers how fast (defaults in parentheses):

- a killed prefork *child*: its parent hands the message back at once
  (``reject_on_worker_lost``, to the end of the queue) and whoever takes it takes the
  lease over, seeing the holder's pid gone on this host; if the queue is long and the
  lease runs out first, the sweeper's copy gets there first (either way, seconds to
  a lease);
- a whole worker killed: the lease runs out (``lease_seconds``, 60 s) and the next
  sweep re-enqueues it (≤ 20 s later);
- a task cancelled because Redis went away (Celery terminates it): its lease is
  handed back on the way out, free at once and swept after one lease;
- a message a worker had received but not yet started when it died: the broker's
  ``visibility_timeout`` (600 s), the backstop for this small window.

Celery's own machinery stays in charge of delivery (late acks, reject on worker
lost); the lease only adds "who runs this now, until when", which the Redis
transport cannot say.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import Retry

from shared.batchstore import BatchStore
from shared.errors import JobNotFound
from shared.jobstore import JobStore
from shared.leases import LeaseBook, process_identity
from shared.messages import PREDICT_CHUNK_TASK, PREDICT_TASK, ChunkMessage, PredictMessage
from shared.schemas import TERMINAL_STATUSES, JobStatus

__all__ = ["LeaseKeeper", "RunningWork", "Sweeper"]

logger = logging.getLogger(__name__)


class RunningWork:
    """The units this process runs, each under a lease it renews.

    Parameters
    ----------
    book
        The lease book.
    pid
        This process's id (the owner name and the liveness test use it).
    """

    def __init__(self, book: LeaseBook, *, pid: int) -> None:
        self.book = book
        self.pid = pid
        self.identity = process_identity()
        # A fresh nonce per process: a later process reusing this pid is another owner.
        self.owner = f"{self.identity}|{pid}|{uuid.uuid4().hex[:8]}"
        self._units: set[str] = set()
        self._lock = threading.Lock()

    def units(self) -> list[str]:
        """The units this process holds leases on now."""
        with self._lock:
            return sorted(self._units)

    @contextmanager
    def lease(self, unit: str, *, queue: str) -> Iterator[bool]:
        """Hold ``unit``'s lease while the block runs; yields False if another live
        process holds it (this delivery is a duplicate: skip it).

        The lease is released when the block ends normally (the unit ended) and
        handed back when it raises: free for any process to take, and re-enqueued by the
        sweeper if nobody has within a lease (after a Celery ``Retry``: within its
        countdown plus a lease, the time the retry needs to come back). A task that dies
        with a failure its ``on_failure`` records is then simply forgotten by the sweeper.
        """
        acquired, holder = self.book.acquire(
            unit, self.owner, queue=queue, identity=self.identity, pid=self.pid
        )
        if not acquired and holder is not None and holder.is_dead_neighbour(self.identity):
            logger.warning("%s: its holder (pid %s) died; taking it over.", unit, holder.pid)
            acquired, holder = self.book.acquire(
                unit,
                self.owner,
                queue=queue,
                identity=self.identity,
                pid=self.pid,
                take_from=holder.owner,
            )
        if not acquired:
            logger.info(
                "%s is running elsewhere (%s); this delivery is a duplicate.",
                unit,
                holder.owner if holder else "?",
            )
            yield False
            return
        with self._lock:
            self._units.add(unit)
        try:
            yield True
        except BaseException as exc:
            # Terminated (a lost broker connection), a retry, a hard error: not ended.
            within = self.book.lease_seconds
            if isinstance(exc, Retry):
                within += _countdown(exc)
            self._drop(unit)
            self._safely(
                lambda: self.book.hand_back(unit, self.owner, within_seconds=within),
                f"hand back {unit}",
            )
            raise
        self._drop(unit)
        self._safely(lambda: self.book.release(unit, self.owner), f"release {unit}")

    def renew(self) -> list[str]:
        """Renew every lease held; returns (and stops renewing) the ones lost."""
        units = self.units()
        lost = self.book.renew(units, self.owner)
        for unit in lost:
            logger.warning(
                "%s: lease lost (it ran out and the unit was taken over); the first to "
                "finish records it, once.",
                unit,
            )
            self._drop(unit)
        return lost

    def _drop(self, unit: str) -> None:
        with self._lock:
            self._units.discard(unit)

    @staticmethod
    def _safely(step: Callable[[], object], what: str) -> None:
        try:
            step()
        except Exception:  # Redis may be down: the lease then runs out and is swept
            logger.warning("Could not %s.", what, exc_info=True)


def _countdown(retry: Retry) -> float:
    """Seconds until a Celery retry runs (its ``when`` is a countdown or an ETA)."""
    when = retry.when
    if isinstance(when, int | float):
        return float(when)
    if isinstance(when, datetime):
        return max((when - datetime.now(when.tzinfo or UTC)).total_seconds(), 0.0)
    return 60.0  # the longest back-off the tasks use


class Sweeper:
    """Re-enqueues units whose lease ran out and that have not ended.

    Parameters
    ----------
    book, jobs, batches
        The lease book and the stores that say whether a unit ended.
    send
        ``send(task_name, kwargs, queue)``: puts a message on the queue (Celery's
        ``send_task`` in the worker).
    interval_seconds
        Least time between two sweeps across all workers (the lock's lifetime).
    default_queue
        Where to send a unit whose holder did not record its queue.
    """

    def __init__(
        self,
        book: LeaseBook,
        jobs: JobStore,
        batches: BatchStore,
        send: Callable[[str, dict[str, Any], str], object],
        *,
        interval_seconds: float,
        default_queue: str,
    ) -> None:
        self.book = book
        self.jobs = jobs
        self.batches = batches
        self.send = send
        self.interval_seconds = interval_seconds
        self.default_queue = default_queue
        self.lock_key = f"{book.prefix}:sweeper"

    def sweep(self, owner: str, *, limit: int = 200) -> list[str]:
        """Sweep once if no other process swept within the interval; returns the units
        re-enqueued."""
        took = self.book.redis.set(
            self.lock_key, owner, nx=True, px=max(int(self.interval_seconds * 1000), 1)
        )
        if not took:
            return []
        requeued = []
        for unit, holder in self.book.expired(limit):
            if self._ended(unit):
                self.book.forget(unit, holder.grant)
                continue
            name, kwargs = _message(unit)
            # Send first, forget second: a crash in between sends a duplicate (harmless),
            # never loses the unit.
            self.send(name, kwargs, holder.queue or self.default_queue)
            self.book.forget(unit, holder.grant)
            requeued.append(unit)
            logger.warning(
                "Re-enqueued %s: its lease ran out (holder %s).", unit, holder.owner or "none"
            )
        return requeued

    def _ended(self, unit: str) -> bool:
        """True if the unit needs no more work: ended, cancelled or expired."""
        kind, _, rest = unit.partition(":")
        try:
            if kind == "job":
                return self.jobs.get(rest).status in TERMINAL_STATUSES
            if kind == "chunk":
                batch_id, _, index = rest.rpartition(":")
                if self.batches.get(batch_id).status == JobStatus.CANCELLED:
                    return True
                return self.batches.has_result(batch_id, int(index))
        except JobNotFound:
            return True
        logger.error("Unknown unit %r in the lease book; dropping it.", unit)
        return True


def _message(unit: str) -> tuple[str, dict[str, Any]]:
    """The Celery task name and arguments that run ``unit``."""
    kind, _, rest = unit.partition(":")
    if kind == "job":
        return PREDICT_TASK, PredictMessage(job_id=rest).model_dump()
    batch_id, _, index = rest.rpartition(":")
    return PREDICT_CHUNK_TASK, ChunkMessage(batch_id=batch_id, chunk=int(index)).model_dump()


class LeaseKeeper:
    """A daemon thread: renews this process's leases and takes its turn sweeping.

    Parameters
    ----------
    work
        The units this process runs.
    sweeper
        The sweeper (None: renew only).
    renew_seconds
        Time between renewals.
    """

    def __init__(self, work: RunningWork, sweeper: Sweeper | None, *, renew_seconds: float) -> None:
        self.work = work
        self.sweeper = sweeper
        self.renew_seconds = renew_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"leases-{work.pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.work.renew()
            except Exception:  # Redis away: leases run out and get swept; keep trying
                logger.warning("Lease renewal failed.", exc_info=True)
            if self.sweeper is not None:
                try:
                    self.sweeper.sweep(self.work.owner)
                except Exception:
                    logger.warning("Sweep failed.", exc_info=True)
            if self._stop.wait(self.renew_seconds):
                break
