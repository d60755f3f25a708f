"""Job records in a real Redis: transitions are atomic and terminal states stick."""

from __future__ import annotations

import pickle

import pytest
import redis

from shared.errors import InvalidImage, JobNotCancellable, JobNotFound, SkyserveError
from shared.jobstore import JobStore, new_job_id
from shared.schemas import ImageInput, Job, JobResult, JobStatus


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), prefix=key_prefix, ttl_seconds=60)


def _job() -> Job:
    return Job(
        id=new_job_id(),
        tasks=["inclination"],
        input=ImageInput(size_bytes=3, sha256="x", format="PNG", width=1, height=1),
    )


def test_lifecycle_and_redelivery(store: JobStore) -> None:
    job = store.create(_job(), b"abc")
    assert store.payload(job.id) == b"abc"
    running = store.start(job.id)
    assert running.status == JobStatus.RUNNING and running.attempts == 1
    done = store.succeed(job.id, JobResult(tasks={}, models={"inclination": 1}))
    assert done.status == JobStatus.SUCCEEDED and done.progress.done == 1
    # A redelivered message finds the job finished and must not restart or re-answer it.
    again = store.start(job.id)
    assert again.status == JobStatus.SUCCEEDED and again.attempts == 1
    store.succeed(job.id, JobResult(tasks={}, models={"inclination": 2}))
    assert store.get(job.id).result.models == {"inclination": 1}


def test_cancel_wins_over_a_late_worker(store: JobStore) -> None:
    job = store.create(_job(), b"abc")
    store.start(job.id)
    assert store.cancel(job.id).status == JobStatus.CANCELLED
    store.succeed(job.id, JobResult(tasks={}, models={}))
    store.fail(job.id, InvalidImage("late"))
    assert store.get(job.id).status == JobStatus.CANCELLED
    with pytest.raises(JobNotFound):
        store.payload(job.id)  # cancelling frees the upload


def test_failed_job_keeps_a_readable_reason_and_cannot_be_cancelled(store: JobStore) -> None:
    job = store.create(_job(), None)
    failed = store.fail(job.id, InvalidImage("The image data is corrupt or truncated."))
    assert failed.error is not None and failed.error.code == "invalid-image"
    assert "truncated" in (failed.error.detail or "")
    with pytest.raises(JobNotCancellable):
        store.cancel(job.id)


def test_idempotency_key(store: JobStore) -> None:
    first = store.create(_job(), b"a", idempotency_key="k1")
    second = store.create(_job(), b"b", idempotency_key="k1")
    assert second.id == first.id


def test_missing_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("0" * 32)
    with pytest.raises(JobNotFound):
        store.start("0" * 32)


def test_errors_survive_pickling_with_their_extras() -> None:
    err = InvalidImage("bad", hint="send PNG")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, SkyserveError) and back.extra == {"hint": "send PNG"}
    assert back.to_problem()["hint"] == "send PNG"
