"""Micro-batching: concurrent single-image jobs of one process share an ensemble run.

How it works. The worker runs with a pool that executes several tasks in one process
(``--pool threads --concurrency N``, N ≥ ``microbatch_max_size``; with late acks and a
prefetch multiplier of 1 the worker then reserves N messages, so N jobs can be here at
once). Each ``predict`` task stays an ordinary Celery task in its own thread: it takes
its job's lease, starts the job, reads and decodes its image, and only then hands the
prepared image to :class:`MicroBatcher`. The batcher groups what it is handed by
(task, loaded model version) and runs each group through
:func:`services.worker.answers.answer_task`, the same code a batch chunk and a job
alone use, once per group, with at most ``microbatch_max_size`` images. A group is
run when it is full, when its oldest image has waited ``microbatch_max_wait_ms``, or
at once when no other job of this process is still being prepared (nobody else can
join, so waiting would only add latency); one run at a time, so jobs that arrive while
a run is busy form the next group without waiting at all. A job that finds itself
alone runs its ensemble in its own thread, with no hand-over.

Each job then goes on alone: its thread gets its own answer back (or its own error),
stores it with ``JobStore.succeed``/``fail``, releases its lease and returns, and
Celery acknowledges that job's message. A job whose image does not decode fails in
its own thread before it reaches the batcher; an answer refused as non-finite is
refused for that image only; a model that cannot run fails the jobs that asked it,
exactly as each would have failed alone.

Why at-least-once still holds. Nothing about delivery changes: every message is still
a separate late-acked Celery task, acknowledged only after *its* job's result is
stored (the store is idempotent: a job never leaves a terminal state), and every job
in a micro-batch is covered by its own lease, renewed by the process's lease keeper
while the job waits in the batcher or runs. So:

- the worker killed mid-micro-batch: none of its messages was acknowledged; each
  job's lease runs out and the sweeper of a surviving worker re-enqueues the job
  (``services/worker/recovery.py``); the broker's own redelivery after the visibility
  timeout finds the job ended and does nothing (``_run_job``'s terminal check);
- a warm shutdown (SIGTERM): Celery stops taking messages and waits for the running
  task threads, and the batcher keeps running groups until the last of them is
  answered (its thread only stops with the process);
- a Redis error while one job stores its answer: that job alone is retried (Celery
  ``retry``), the others of its group are already stored and acknowledged.

What this design chose not to use. ``celery-batches`` buffers messages in the
consumer and hands a list to one task call, but acknowledges the late-acked messages
only when the whole call returns and has no error callback, so a dead pool process
leaves them unacknowledged, holding prefetch slots, until the connection is reset; its
time-limit, retry and per-job failure handling are per list, not per job; it flushes on
a repeating timer, so a lone job always waits the interval; and it needs the prefetch
multiplier raised for every task of the queue, batch chunks included. Here each job
keeps Celery's ordinary per-message machinery and only the ONNX Runtime call is shared.

The thread pool does not enforce Celery's time limits (only prefork does), so a job
waits at most ``task_soft_time_limit_seconds`` for its group and then fails with a
readable reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.worker.answers import (
    ModelSet,
    Prepared,
    Stopwatch,
    answer,
    answer_task,
    settle,
    spec_key,
)
from services.worker.metrics import BATCH_SIZE
from services.worker.sessions import LoadedModel
from shared.errors import NonFiniteAnswer, SkyserveError
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)

_Key = tuple[str, int]  # (task name, id of the loaded model version)


@dataclass
class _Item:
    """One job's image for one task, waiting for its group's run."""

    definition: TaskDefinition
    name: str
    model: LoadedModel
    image: np.ndarray
    queued: float = field(default_factory=time.monotonic)
    future: Future[TaskResult] = field(default_factory=Future)


class MicroBatcher:
    """Runs the ensembles of concurrent single-image jobs of one process together.

    Parameters
    ----------
    max_size
        Most images in one run of a task (``microbatch_max_size``); 1 turns
        micro-batching off: every job runs its ensembles in its own thread, as before.
    max_wait_s
        Longest a queued image waits for others (``microbatch_max_wait_ms`` / 1000).
    max_batch_size
        Most rows given to one session run (``max_batch_size``).
    timeout_s
        Longest a job waits for its answers before it fails.
    """

    def __init__(
        self, *, max_size: int, max_wait_s: float, max_batch_size: int, timeout_s: float
    ) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._pending: dict[_Key, deque[_Item]] = {}
        self._preparing: set[int] = set()  # threads of jobs that started, not yet handed over
        self._running = False  # one run at a time (a group, or a lone job in its thread)
        self._thread: threading.Thread | None = None
        self._runs = 0
        self._images = 0
        self._largest = 0
        self._in_run = 0  # images in the run going on now

    @property
    def enabled(self) -> bool:
        """Whether jobs are ever answered together (``max_size`` above 1)."""
        return self.max_size > 1

    def figures(self) -> dict[str, Any]:
        """Runs and images so far, for the heartbeat (and the tests that read it)."""
        with self._cond:
            return {
                "max_size": self.max_size,
                "max_wait_ms": round(self.max_wait_s * 1000.0, 3),
                "runs": self._runs,
                "images": self._images,
                "largest": self._largest,
                "in_run": self._in_run,
            }

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Mark the calling thread's job as on its way here (started, image not yet
        prepared): while any job is, a group waits for it, up to ``max_wait_s``."""
        me = threading.get_ident()
        with self._cond:
            self._preparing.add(me)
        try:
            yield
        finally:
            with self._cond:
                if me in self._preparing:
                    self._preparing.discard(me)
                    self._cond.notify_all()

    def answer(
        self,
        definitions: Mapping[str, TaskDefinition],
        models: Mapping[str, LoadedModel],
        image: Prepared,
        *,
        watch: Stopwatch | None = None,
    ) -> dict[str, TaskResult]:
        """One job's answers: each task's ensemble run on ``image``, alone or with the
        images of other jobs of this process.

        Raises
        ------
        SkyserveError
            This job's own failure: NonFiniteAnswer, ModelIntegrityError, or a wait
            past ``timeout_s``.
        """
        if not self.enabled:
            self._leave()
            (answers,) = answer(
                definitions, models, [image], max_batch_size=self.max_batch_size, watch=watch
            )
            self._count({name: 1 for name in models})
            return answers
        # Evidence passes (applicability) run in the groups like any task's ensemble.
        every = models.every() if isinstance(models, ModelSet) else dict(models)
        items = [
            _Item(definitions[name], name, model, image[spec_key(model)])
            for name, model in every.items()
        ]
        with self._cond:
            self._preparing.discard(threading.get_ident())
            alone = not self._pending and not self._running and not self._preparing
            if alone:
                self._running = True
            else:
                for item in items:
                    self._pending.setdefault((item.name, id(item.model)), deque()).append(item)
                self._ensure_thread()
            self._cond.notify_all()
        if alone:
            try:
                for item in items:
                    self._run([item])
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
        return settle(definitions, models, self._collect(items, models, watch))

    def _collect(
        self, items: list[_Item], requested: Mapping[str, LoadedModel], watch: Stopwatch | None
    ) -> dict[str, TaskResult]:
        deadline = time.monotonic() + self.timeout_s
        answers: dict[str, TaskResult] = {}
        for item in items:
            try:
                answers[item.name] = item.future.result(
                    timeout=max(deadline - time.monotonic(), 0.0)
                )
            except FutureTimeout:
                raise SkyserveError(
                    f"The job waited past the worker's time limit ({self.timeout_s:g} s) "
                    f"for its {item.name!r} answer."
                ) from None
            if watch is not None:
                watch.lap(f"infer:{item.name}" if item.name in requested else f"evidence:{item.name}")
        return answers

    def _leave(self) -> None:
        with self._cond:
            self._preparing.discard(threading.get_ident())
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        # Called with the lock held. A daemon: it never holds work that is not also held
        # by a task thread waiting on it, so nothing is lost when the process ends.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="microbatch", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            try:
                self._run(group)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _next_group(self) -> list[_Item]:
        """Wait for a group that should run now; take it (marked running)."""
        with self._cond:
            while True:
                if self._pending and not self._running:
                    now = time.monotonic()
                    full = [k for k, q in self._pending.items() if len(q) >= self.max_size]
                    oldest = min(self._pending, key=lambda k: self._pending[k][0].queued)
                    due = self._pending[oldest][0].queued + self.max_wait_s
                    if full or not self._preparing or now >= due:
                        key = full[0] if full else oldest
                        queue = self._pending[key]
                        group = [queue.popleft() for _ in range(min(len(queue), self.max_size))]
                        if not queue:
                            del self._pending[key]
                        self._running = True
                        return group
                    self._cond.wait(due - now)
                else:
                    self._cond.wait()

    def _run(self, group: list[_Item]) -> None:
        """Run one task over the group's images and hand each job its own outcome."""
        first = group[0]
        with self._cond:
            self._in_run = len(group)
        try:
            batch = np.stack([item.image for item in group])
            results = answer_task(
                first.definition,
                first.name,
                first.model,
                batch,
                max_batch_size=self.max_batch_size,
            )
        except BaseException as exc:  # the model's fault: each job fails as it would alone
            if not isinstance(exc, SkyserveError):
                logger.exception("A micro-batch of %d %r job(s) failed.", len(group), first.name)
            for item in group:
                item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._count({first.name: len(group)})
            with self._cond:
                self._in_run = 0
        for item, result in zip(group, results, strict=True):
            if isinstance(result, NonFiniteAnswer):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if len(group) > 1:
            logger.debug("Answered %d %r jobs in one run.", len(group), first.name)

    def _count(self, sizes: Mapping[str, int]) -> None:
        with self._cond:
            for name, size in sizes.items():
                self._runs += 1
                self._images += size
                self._largest = max(self._largest, size)
                BATCH_SIZE.labels(task=name).observe(size)
