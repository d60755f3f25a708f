"""Leases held while work runs, and the sweeper that re-enqueues work whose lease ran out,
against a real Redis and a real Celery producer (the messages land in the real queue)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Retry

from services.worker.recovery import LeaseKeeper, RunningWork, Sweeper
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.leases import LeaseBook, chunk_unit, job_unit, process_identity
from shared.messages import PREDICT_CHUNK_TASK, PREDICT_TASK
from shared.schemas import Batch, JobResult
from tests.worker.payloads import png_bytes, submit_image_job


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def celery_client(redis_url: str) -> Iterator[Celery]:
    app = Celery("skyserve-test-sweeper", broker=redis_url, set_as_current=False)
    app.conf.task_serializer = "json"
    yield app
    app.close()


@pytest.fixture
def stores(client: redis.Redis, key_prefix: str) -> tuple[JobStore, BatchStore]:
    return (
        JobStore(client, prefix=key_prefix, ttl_seconds=60),
        BatchStore(client, prefix=key_prefix, ttl_seconds=60),
    )


def sweeper(
    book: LeaseBook, stores: tuple[JobStore, BatchStore], app: Celery, interval: float = 0.5
) -> Sweeper:
    def send(name: str, kwargs: dict[str, Any], queue: str) -> None:
        app.send_task(name, kwargs=kwargs, queue=queue)

    return Sweeper(book, *stores, send, interval_seconds=interval, default_queue="unused")


def queued(client: redis.Redis, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """The (task name, kwargs) of every message waiting in ``queue``."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], kwargs))
    return out


def test_expired_unfinished_work_is_re_enqueued_once(
    client: redis.Redis, key_prefix: str, stores: tuple[JobStore, BatchStore], celery_client: Celery
) -> None:
    jobs, batches = stores
    book = LeaseBook(client, prefix=key_prefix, lease_seconds=0.2)
    stranded = submit_image_job(jobs, png_bytes(seed=1))
    finished = submit_image_job(jobs, png_bytes(seed=2))
    jobs.succeed(finished.id, JobResult(tasks={}, models={}))
    batch = batches.create(Batch(id="b" * 32, tasks=["inclination"], columns=["file"], chunks=2))
    for unit in (job_unit(stranded.id), job_unit(finished.id), chunk_unit(batch.id, 1)):
        book.acquire(unit, "dead", queue=key_prefix, identity="elsewhere", pid=1)
    book.acquire(job_unit("f" * 32), "dead", queue=key_prefix, identity="elsewhere", pid=1)
    time.sleep(0.3)

    swept = sweeper(book, stores, celery_client)
    requeued = swept.sweep("me")

    assert sorted(requeued) == sorted([job_unit(stranded.id), chunk_unit(batch.id, 1)])
    assert sorted(queued(client, key_prefix)) == sorted(
        [
            (PREDICT_TASK, {"job_id": stranded.id}),
            (PREDICT_CHUNK_TASK, {"batch_id": batch.id, "chunk": 1}),
        ]
    )
    assert book.units() == {}  # the finished and the vanished job were only forgotten
    assert swept.sweep("someone-else") == []  # one sweep per interval across workers


def test_a_cancelled_batchs_chunk_is_not_re_enqueued(
    client: redis.Redis, key_prefix: str, stores: tuple[JobStore, BatchStore], celery_client: Celery
) -> None:
    _, batches = stores
    book = LeaseBook(client, prefix=key_prefix, lease_seconds=0.1)
    batch = batches.create(Batch(id="c" * 32, tasks=["inclination"], columns=["file"], chunks=1))
    batches.cancel(batch.id)
    book.acquire(chunk_unit(batch.id, 0), "dead", queue=key_prefix, identity="x", pid=1)
    time.sleep(0.2)

    assert sweeper(book, stores, celery_client).sweep("me") == []
    assert client.llen(key_prefix) == 0 and book.units() == {}


def test_a_lease_is_released_when_the_work_ends_and_handed_back_when_it_raises(
    client: redis.Redis, key_prefix: str
) -> None:
    book = LeaseBook(client, prefix=key_prefix, lease_seconds=30)
    work = RunningWork(book, pid=os.getpid())

    with work.lease("job:a", queue="q") as held:
        assert held and work.units() == ["job:a"]
        assert book.holder("job:a").owner == work.owner
    assert work.units() == [] and book.units() == {}

    with pytest.raises(Retry), work.lease("job:b", queue="q") as held:
        raise Retry("Redis blinked", when=20)
    assert work.units() == [] and book.holder("job:b").owner == ""  # free for the retry
    assert 45 < book.units()["job:b"] - time.time() <= 51  # …and swept if it never comes

    with pytest.raises(SystemExit), work.lease("job:c", queue="q") as held:
        raise SystemExit(1)  # terminated: free at once, swept after one lease
    assert book.holder("job:c").owner == ""
    assert 25 < book.units()["job:c"] - time.time() <= 31


def test_a_second_delivery_of_running_work_is_skipped(client: redis.Redis, key_prefix: str) -> None:
    book = LeaseBook(client, prefix=key_prefix, lease_seconds=30)
    first = RunningWork(book, pid=os.getpid())
    second = RunningWork(book, pid=os.getpid())  # a live sibling

    with first.lease("chunk:x:0", queue="q"):
        with second.lease("chunk:x:0", queue="q") as held:
            assert not held
        assert book.holder("chunk:x:0").owner == first.owner


def test_the_keeper_renews_leases_while_work_runs(client: redis.Redis, key_prefix: str) -> None:
    book = LeaseBook(client, prefix=key_prefix, lease_seconds=0.6)
    work = RunningWork(book, pid=os.getpid())
    keeper = LeaseKeeper(work, None, renew_seconds=0.1)
    keeper.start()
    try:
        with work.lease("job:long", queue="q"):
            time.sleep(1.5)  # well past one lease
            assert book.expired() == []
            taken, _ = book.acquire(
                "job:long", "other", queue="q", identity=process_identity(), pid=1
            )
            assert not taken
    finally:
        keeper.stop()
    assert not keeper.alive and book.units() == {}
