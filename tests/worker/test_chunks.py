"""The predict-chunk task run in this process against a real Redis and a real registry.

These check how each outcome of a chunk lands in the batch: skipped, failed whole,
given up, retried. ``tests/integration/test_batches.py`` runs chunks through the API,
the broker and a real worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Task

from services.worker import chunks as chunks_module
from services.worker.celery_app import create_celery_app
from services.worker.settings import WorkerSettings
from shared.batchstore import BatchStore
from shared.jobstore import new_job_id
from shared.messages import PREDICT_CHUNK_TASK
from shared.registry import Manifest
from shared.schemas import Batch, BatchRow, BatchRowResult, JobStatus, Problem
from tests.helpers.processes import free_port
from tests.worker.payloads import png_bytes


@pytest.fixture
def settings(
    redis_url: str, key_prefix: str, registry_root: Path, regression_v1: Manifest
) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        celery_queue=key_prefix,
        models_dir=registry_root,
        intra_op_threads=1,
        warm_up=False,
        transient_retries=1,
        max_job_attempts=3,
        cutout_provider="none",
    )


@pytest.fixture
def batches(settings: WorkerSettings) -> Iterator[BatchStore]:
    client = redis.Redis.from_url(settings.redis_url)
    yield BatchStore(client, prefix=settings.key_prefix, ttl_seconds=600)
    client.close()


@pytest.fixture
def task(settings: WorkerSettings) -> Task:
    app = create_celery_app(settings)
    app.loader.import_default_modules()
    return app.tasks[PREDICT_CHUNK_TASK]


def make_batch(batches: BatchStore, chunks: list[list[BatchRow]]) -> Batch:
    """Store a batch's chunks and record as the API does (without enqueueing them)."""
    batch = Batch(
        id=new_job_id(),
        tasks=["inclination"],
        columns=["id", "file"],
        chunks=len(chunks),
        chunk_rows=max(len(c) for c in chunks),
    )
    batch.progress.total = sum(len(c) for c in chunks)
    for index, rows in enumerate(chunks):
        batches.put_chunk(batch.id, index, rows)
    return batches.create(batch)


def file_rows(batches: BatchStore, batch_id: str, start: int, count: int) -> list[BatchRow]:
    rows = []
    for k in range(start, start + count):
        batches.put_file(batch_id, f"img{k}.png", png_bytes(seed=k))
        rows.append(BatchRow(row=k, id=f"r{k}", input={"id": f"r{k}", "file": f"img{k}.png"}))
    return rows


def run(task: Task, batch_id: str, chunk: int) -> str:
    return task.apply(kwargs={"batch_id": batch_id, "chunk": chunk}).get()


def results(batches: BatchStore, batch_id: str, chunks: int) -> list[BatchRowResult]:
    return list(batches.iter_results(batch_id, chunks))


def test_a_chunk_is_answered_once_and_a_redelivery_changes_nothing(
    task: Task, batches: BatchStore
) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]])
    rows = file_rows(batches, batch.id, 0, 3)
    rows.append(
        BatchRow(
            row=3,
            id="bad",
            input={"id": "bad", "file": ""},
            error=Problem(title="This catalog row cannot be used", status=422, detail="Line 5."),
        )
    )
    rows.append(BatchRow(row=4, id="gone", input={"id": "gone", "file": "missing.png"}))
    batches.put_chunk(batch.id, 0, rows)

    assert run(task, batch.id, 0) == "recorded"
    assert run(task, batch.id, 0) == "duplicate"

    record = batches.get(batch.id)
    assert record.status == JobStatus.SUCCEEDED
    assert (record.progress.done, record.progress.failed) == (3, 2)
    got = {r.id: r for r in results(batches, batch.id, 1)}
    assert [got[f"r{k}"].status for k in range(3)] == ["succeeded"] * 3
    assert got["r0"].result["inclination"].model_version == 1
    assert got["bad"].error.detail == "Line 5."  # the API's reason, as it was
    assert "no image named 'missing.png'" in got["gone"].error.detail


def test_targets_without_a_cutout_service_fail_row_by_row(task: Task, batches: BatchStore) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]])
    rows = file_rows(batches, batch.id, 0, 1)
    rows.append(BatchRow(row=1, id="m33", input={"id": "m33", "name": "M33"}))
    rows.append(BatchRow(row=2, id="nope", input={"id": "nope", "name": "Andromeda Galxy"}))
    batches.put_chunk(batch.id, 0, rows)

    assert run(task, batch.id, 0) == "recorded"

    got = {r.id: r for r in results(batches, batch.id, 1)}
    assert got["r0"].status == "succeeded"
    assert got["m33"].error.code == "cutout-unavailable"
    assert got["m33"].resolved["name"] == "NGC0598"  # resolved before the fetch failed
    assert got["nope"].error.code == "unknown-target"
    assert "Andromeda Galaxy" in got["nope"].error.model_dump()["suggestions"]


def test_an_unexpected_error_fails_the_rows_instead_of_losing_them(
    task: Task, batches: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]])
    batches.put_chunk(batch.id, 0, file_rows(batches, batch.id, 0, 2))

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    # The task module imported answer_rows by name; patch it where it is called.
    monkeypatch.setattr("services.worker.tasks.answer_rows", broken)
    assert run(task, batch.id, 0) == "recorded"

    rows = results(batches, batch.id, 1)
    assert [r.status for r in rows] == ["failed", "failed"]
    assert all("internal problem (RuntimeError)" in r.error.detail for r in rows)
    assert batches.get(batch.id).status == JobStatus.SUCCEEDED  # every row is accounted for


def test_one_rows_bug_fails_that_row_only(
    task: Task, batches: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]])
    batches.put_chunk(batch.id, 0, file_rows(batches, batch.id, 0, 3))
    real_prepare = chunks_module.prepare

    def flaky(data: bytes, *args: object, **kwargs: object) -> object:
        if data == png_bytes(seed=1):
            raise KeyError("a bug")
        return real_prepare(data, *args, **kwargs)

    monkeypatch.setattr(chunks_module, "prepare", flaky)
    assert run(task, batch.id, 0) == "recorded"

    rows = results(batches, batch.id, 1)
    assert [r.status for r in rows] == ["succeeded", "failed", "succeeded"]
    assert "internal problem (KeyError)" in rows[1].error.detail


def test_a_cancelled_batch_runs_no_more_chunks(task: Task, batches: BatchStore) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]] * 2)
    batches.put_chunk(batch.id, 0, file_rows(batches, batch.id, 0, 1))
    batches.put_chunk(batch.id, 1, file_rows(batches, batch.id, 1, 1))
    assert run(task, batch.id, 0) == "recorded"
    batches.cancel(batch.id)

    assert run(task, batch.id, 1) == "cancelled"
    assert not batches.has_result(batch.id, 1)
    assert batches.get(batch.id).progress.done == 1


def test_a_chunk_that_keeps_killing_its_worker_is_given_up(
    task: Task, batches: BatchStore, settings: WorkerSettings
) -> None:
    batch = make_batch(batches, [[BatchRow(row=0, input={"file": "x"})]])
    batches.put_chunk(batch.id, 0, file_rows(batches, batch.id, 0, 2))
    # As if three deliveries had started and their processes died.
    batches.redis.set(batches.key(batch.id, "attempts", 0), settings.max_job_attempts)

    assert run(task, batch.id, 0) == "recorded"

    rows = results(batches, batch.id, 1)
    assert all(r.status == "failed" and "started 3 times" in r.error.detail for r in rows)


def test_a_vanished_batch_is_acknowledged_quietly(task: Task) -> None:
    assert run(task, new_job_id(), 0) == "missing"


def test_a_redis_outage_is_retried_then_given_up(
    settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    offline = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_celery_app(offline)
    app.loader.import_default_modules()

    outcome = app.tasks[PREDICT_CHUNK_TASK].apply(kwargs={"batch_id": new_job_id(), "chunk": 0})

    assert outcome.failed() and isinstance(outcome.result, redis.ConnectionError)
    retries = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(retries) == offline.transient_retries + 1
