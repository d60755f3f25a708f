"""What a batch keeps in a real Redis, and for how long: bounded input, freed when done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared.batchstore import BatchStore
from shared.errors import BatchTooLarge
from shared.jobstore import new_job_id
from shared.schemas import Batch, BatchRow, BatchRowResult


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def keys(store: BatchStore, batch_id: str) -> set[str]:
    return {k.decode() for k in store.redis.scan_iter(match=store.key(batch_id) + "*")}


def rows(start: int, count: int) -> list[BatchRow]:
    return [
        BatchRow(row=k, id=f"r{k}", input={"file": f"img{k}.png"})
        for k in range(start, start + count)
    ]


def stored_batch(store: BatchStore, chunks: int = 2) -> Batch:
    batch = Batch(
        id=new_job_id(), tasks=["inclination"], columns=["file"], chunks=chunks, chunk_rows=2
    )
    batch.progress.total = 2 * chunks
    for index in range(chunks):
        store.put_chunk(batch.id, index, rows(2 * index, 2))
        for row in rows(2 * index, 2):
            store.put_file(batch.id, row.input["file"], b"\x89PNG" + bytes(100))
    return store.create(batch)


def results(chunk_rows: list[BatchRow]) -> list[BatchRowResult]:
    return [
        BatchRowResult(row=r.row, id=r.id, input=r.input, status="succeeded") for r in chunk_rows
    ]


def test_input_is_freed_as_chunks_are_recorded(client: redis.Redis, key_prefix: str) -> None:
    store = BatchStore(client, prefix=key_prefix, ttl_seconds=60)
    batch = stored_batch(store)
    assert store.file(batch.id, "img3.png") is not None

    store.record_chunk(batch.id, 0, results(store.chunk(batch.id, 0)))
    left = keys(store, batch.id)
    assert store.key(batch.id, "chunk", 0) not in left and store.key(batch.id, "chunk", 1) in left
    assert store.key(batch.id, "files") in left  # chunk 1 still needs its images

    store.record_chunk(batch.id, 1, results(store.chunk(batch.id, 1)))
    assert keys(store, batch.id) == {
        store.key(batch.id),
        store.key(batch.id, "counts"),
        store.key(batch.id, "result", 0),
        store.key(batch.id, "result", 1),
    }
    assert store.get(batch.id).progress.done == 4


def test_a_cancelled_batch_keeps_its_input_only_briefly(
    client: redis.Redis, key_prefix: str
) -> None:
    store = BatchStore(client, prefix=key_prefix, ttl_seconds=3600, ended_input_ttl=30)
    batch = stored_batch(store)
    store.cancel(batch.id)
    for key in (store.key(batch.id, "files"), store.key(batch.id, "chunk", 1)):
        assert 0 < client.ttl(key) <= 30
    assert client.ttl(store.key(batch.id)) > 3000  # the record stays readable


def test_stored_input_is_bounded_and_a_refused_batch_is_discarded(
    client: redis.Redis, key_prefix: str
) -> None:
    store = BatchStore(client, prefix=key_prefix, ttl_seconds=60, max_stored_bytes=10_000)
    batch_id = new_job_id()
    store.put_chunk(batch_id, 0, rows(0, 2))
    store.put_file(batch_id, "a.png", bytes(6_000))
    with pytest.raises(BatchTooLarge) as err:
        store.put_file(batch_id, "b.png", bytes(6_000))
    assert err.value.status == 413 and err.value.extra["max_stored_bytes"] == 10_000

    store.discard(batch_id)
    assert keys(store, batch_id) == set()


def test_an_idempotency_key_names_one_stored_batch(client: redis.Redis, key_prefix: str) -> None:
    store = BatchStore(client, prefix=key_prefix, ttl_seconds=60)
    first, second = stored_batch(store, 1), stored_batch(store, 1)
    assert store.claim_idempotency_key("k", first.id) is None
    assert store.claim_idempotency_key("k", second.id).id == first.id

    store.forget_idempotency_key("k", first.id)
    assert store.claim_idempotency_key("k", second.id) is None


@pytest.mark.parametrize("recorded_before_seal", [0, 1, 2])
def test_a_batch_read_while_it_runs_finishes_exactly_once(
    client: redis.Redis, key_prefix: str, recorded_before_seal: int
) -> None:
    # Chunks are queued (and may be recorded) before the API knows how many there are:
    # the batch finishes when the last chunk is recorded *and* it is sealed, whichever
    # comes second, and never before.
    from shared.schemas import JobStatus

    store = BatchStore(client, prefix=key_prefix, ttl_seconds=60)
    batch = store.open(Batch(id=new_job_id(), tasks=["inclination"], columns=[], chunk_rows=2))
    for index in range(2):
        store.put_chunk(batch.id, index, rows(2 * index, 2))
    for index in range(recorded_before_seal):
        assert store.record_chunk(batch.id, index, results(store.chunk(batch.id, index)))
        assert store.get(batch.id).status == JobStatus.RUNNING  # never finished unsealed
    sealed = store.seal(batch.id, columns=["file"], id_column="id", rows=4, chunks=2)
    assert sealed.chunks == 2 and sealed.progress.total == 4 and sealed.columns == ["file"]
    assert sealed.status == (JobStatus.SUCCEEDED if recorded_before_seal == 2 else JobStatus.RUNNING
                             if recorded_before_seal else JobStatus.QUEUED)
    for index in range(recorded_before_seal, 2):
        assert store.record_chunk(batch.id, index, results(store.chunk(batch.id, index)))
    done = store.get(batch.id)
    assert done.status == JobStatus.SUCCEEDED and done.progress.done == 4


def test_a_chunk_recorded_after_its_batch_was_discarded_leaves_nothing(
    client: redis.Redis, key_prefix: str
) -> None:
    store = BatchStore(client, prefix=key_prefix, ttl_seconds=60)
    batch = store.open(Batch(id=new_job_id(), tasks=["inclination"], columns=[], chunk_rows=2))
    store.put_chunk(batch.id, 0, rows(0, 2))
    chunk = store.chunk(batch.id, 0)
    store.discard(batch.id)  # the API refused the rest of the catalog
    assert store.record_chunk(batch.id, 0, results(chunk)) is False
    assert keys(store, batch.id) == set()
