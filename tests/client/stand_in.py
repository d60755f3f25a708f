"""A stand-in for the worker's last step: answers written through the worker's own stores.

No Celery worker runs in the client tests. Where a job (or a batch) must finish, a
background thread writes the answer through the same stores the worker uses
(``JobStore.succeed``/``fail``, ``BatchStore.record_chunk``), so the API, Redis and
the client's waiting logic are all real.
"""

from __future__ import annotations

import threading
import time

import redis

from services.api.settings import ApiSettings
from shared.errors import InvalidImage, UnknownTarget
from shared.jobstore import JobStore
from shared.schemas import Job, JobResult, JobStatus, MemberAnswer, TaskResult

__all__ = ["VALUE", "STDEV", "task_result", "job_result", "StandInWorker"]

#: The answer the stand-in worker gives: value ± stdev, as the CLI prints it.
VALUE, STDEV = 61.25, 1.75


def task_result(task: str, value: float = VALUE, stdev: float = STDEV) -> TaskResult:
    """A regression answer shaped as the worker writes it."""
    return TaskResult(
        task=task,
        kind="regression",
        model_version=1,
        unit="deg",
        value=value,
        summary={
            "mean": value,
            "median": value,
            "stdev": stdev,
            "min": value - 2,
            "max": value + 2,
        },
        members=[MemberAnswer(member="m0", architecture="mean-tanh", value=value)],
    )


def job_result(job: Job) -> JobResult:
    return JobResult(
        tasks={t: task_result(t) for t in job.tasks},
        models={t: 1 for t in job.tasks},
        timings_ms={"total": 1.0},
    )


class StandInWorker:
    """Finishes this test's queued jobs and batches after ``delay`` seconds.

    ``fail_jobs`` makes jobs fail instead (with ``fail_with``, if set); batch rows whose ``name`` is
    ``NoSuchGalaxy`` (or that the API flagged) fail, the others succeed.
    """

    def __init__(self, settings: ApiSettings, *, delay: float = 0.3) -> None:
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.prefix = settings.key_prefix
        self.jobs = JobStore(self.redis, prefix=self.prefix, ttl_seconds=600)
        self.delay = delay
        self.fail_jobs = False
        #: The error failed jobs carry (default: an unreadable image).
        self.fail_with: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stand-in-worker", daemon=True)

    def __enter__(self) -> StandInWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.close()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for key in self.redis.scan_iter(match=f"{self.prefix}:job:*", count=100):
                self._finish_job(key.decode().rsplit(":", 1)[1])
            for key in self.redis.scan_iter(match=f"{self.prefix}:batch:*:counts", count=100):
                self._finish_batch(key.decode().split(":")[-2])

    def _due(self, created: float) -> bool:
        return time.time() - created >= self.delay

    def _finish_job(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job.status != JobStatus.QUEUED or not self._due(job.created_at.timestamp()):
            return
        if self.fail_jobs:
            error = self.fail_with or InvalidImage("The stand-in worker was told to fail this job.")
            self.jobs.fail(job_id, error)  # type: ignore[arg-type]
        else:
            self.jobs.succeed(job_id, job_result(job))

    def _finish_batch(self, batch_id: str) -> None:
        from shared.batchstore import BatchStore  # only where the batch API exists
        from shared.schemas import BatchRowResult, Problem

        store = BatchStore(self.redis, prefix=self.prefix, ttl_seconds=600)
        batch = store.get(batch_id)
        if batch.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return
        if not self._due(batch.created_at.timestamp()):
            return
        for index in range(batch.chunks):
            if store.has_result(batch_id, index):
                continue
            results = []
            for row in store.chunk(batch_id, index):
                error = row.error
                if error is None and row.input.get("name") == "NoSuchGalaxy":
                    error = Problem.model_validate(UnknownTarget("No such galaxy.").to_problem())
                results.append(
                    BatchRowResult(
                        row=row.row,
                        id=row.id,
                        input=row.input,
                        status="failed" if error else "succeeded",
                        error=error,
                        result=None if error else {t: task_result(t) for t in batch.tasks},
                    )
                )
            store.record_chunk(batch_id, index, results)
