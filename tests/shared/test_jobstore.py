"""Job records in a real Redis: transitions are atomic and terminal states stick."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

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


def test_the_upload_is_deleted_when_the_job_ends(store: JobStore) -> None:
    succeeded, failed = store.create(_job(), b"abc"), store.create(_job(), b"def")
    store.start(succeeded.id)
    store.succeed(succeeded.id, JobResult(tasks={}, models={"inclination": 1}))
    store.fail(failed.id, InvalidImage("bad"))

    for job in (succeeded, failed):
        assert not store.redis.exists(store.blob_key(job.id))
        assert store.redis.ttl(store.job_key(job.id)) > 0  # the record and result stay
    assert store.get(succeeded.id).result.models == {"inclination": 1}


def test_concurrent_requests_with_one_idempotency_key_make_one_job(store: JobStore) -> None:
    # Real threads against one Redis, released together: each writes its own record,
    # then claims the key; the losers must return the winner's job and keep nothing.
    barrier = threading.Barrier(12)
    jobs = [_job() for _ in range(12)]

    def submit(job: Job) -> str:
        barrier.wait()
        return store.create(job, b"payload", idempotency_key="same").id

    with ThreadPoolExecutor(len(jobs)) as pool:
        ids = list(pool.map(submit, jobs))

    assert len(set(ids)) == 1
    kept = [j.id for j in jobs if store.redis.exists(store.job_key(j.id))]
    assert kept == ids[:1]
    assert [j.id for j in jobs if store.redis.exists(store.blob_key(j.id))] == kept


def test_a_key_whose_job_was_not_queued_is_free_again(store: JobStore) -> None:
    first = store.create(_job(), b"a", idempotency_key="k2")
    store.forget_idempotency_key("k2", "0" * 32)  # someone else's: left alone
    assert store.create(_job(), b"a", idempotency_key="k2").id == first.id

    store.forget_idempotency_key("k2", first.id)
    assert store.create(_job(), b"a", idempotency_key="k2").id != first.id


def test_a_key_naming_an_expired_job_is_taken_over(store: JobStore) -> None:
    first = store.create(_job(), b"a", idempotency_key="k3")
    store.redis.delete(store.job_key(first.id))
    assert store.create(_job(), b"a", idempotency_key="k3").id != first.id


def test_the_one_step_start_writes_what_the_transaction_would(store: JobStore) -> None:
    # A target job (floats, a nested query) and an upload; each started by the Lua
    # script and, for comparison, by the WATCH/MULTI path it replaces.
    from shared.schemas import TargetInput

    target = TargetInput(
        query={"ra": 10.684708333333333, "dec": 41.26875},
        ra_deg=10.684708333333333,
        dec_deg=41.26875,
        fov_arcmin=2.0,
        pa_deg=None,
    )
    for made in (_job(), Job(id=new_job_id(), tasks=["inclination", "morphology"], input=target)):
        job = store.create(made, None)
        twin = store.create(job.model_copy(update={"id": new_job_id()}), None)
        first = store.start(job.id)
        by_transaction = store._start_by_transaction(twin.id)
        assert first.status == JobStatus.RUNNING and first.attempts == 1
        assert first.started_at is not None
        assert first.model_dump(exclude={"id", "started_at"}) == by_transaction.model_dump(
            exclude={"id", "started_at"}
        )
        # Stored as Job JSON that reads back to the same record.
        assert store.get(job.id) == first
        again = store.start(job.id)  # a redelivery that finds it running counts an attempt
        assert again.attempts == 2 and again.started_at == first.started_at
    with pytest.raises(JobNotFound):
        store.start(new_job_id())


def test_a_job_that_ends_is_announced_on_its_channel(store: JobStore) -> None:
    job = store.create(_job(), b"abc")
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.done_channel(job.id))
    try:
        store.start(job.id)
        store.succeed(job.id, JobResult(tasks={}, models={"inclination": 1}))
        message = None
        for _ in range(50):
            message = pubsub.get_message(timeout=0.1)
            if message:
                break
        assert message is not None and message["data"] == b"succeeded"
    finally:
        pubsub.close()
