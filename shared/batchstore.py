"""Batches in Redis: chunks of rows in, chunks of results out, progress in O(1).

Layout under ``<prefix>:batch:<id>``:

- ``…`` — the :class:`~shared.schemas.Batch` record (JSON), status transitions by WATCH/MULTI;
- ``…:counts`` — a hash of ``done``, ``failed``, ``chunks_done`` counters;
- ``…:chunk:<k>`` — the rows of chunk ``k`` (JSON list of :class:`BatchRow`);
- ``…:result:<k>`` — their outcomes (JSON list of :class:`BatchRowResult`), written once;
- ``…:file:<name>`` — image bytes uploaded inside a zip.

A chunk's result is written with ``SET NX`` and the counters move in the same Lua
call, so a redelivered chunk never counts twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import redis

from shared.errors import JobNotCancellable, JobNotFound
from shared.schemas import (
    TERMINAL_STATUSES,
    Batch,
    BatchRow,
    BatchRowResult,
    JobStatus,
    utcnow,
)

__all__ = ["BatchStore"]

# Write a chunk's results once and count them in the same atomic step.
_RECORD_CHUNK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4]) then
  redis.call('HINCRBY', KEYS[2], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3])
  return redis.call('HINCRBY', KEYS[2], 'chunks_done', 1)
end
return -1
"""


class BatchStore:
    """Reads and writes batches in Redis (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._record_chunk = client.register_script(_RECORD_CHUNK)

    def key(self, batch_id: str, *parts: object) -> str:
        return ":".join([f"{self.prefix}:batch:{batch_id}", *map(str, parts)])

    # -- writing the input ------------------------------------------------------------
    def put_chunk(self, batch_id: str, index: int, rows: list[BatchRow]) -> None:
        """Store one chunk of rows (called while a catalog is still being read)."""
        payload = json.dumps([r.model_dump(mode="json") for r in rows])
        self.redis.set(self.key(batch_id, "chunk", index), payload, ex=self.ttl)

    def put_file(self, batch_id: str, name: str, data: bytes) -> None:
        """Store an image uploaded inside a zip, for the rows that name it."""
        self.redis.set(self.key(batch_id, "file", name), data, ex=self.ttl)

    def create(self, batch: Batch) -> Batch:
        """Store the record once every chunk is written; counters start at zero."""
        with self.redis.pipeline() as pipe:
            pipe.set(self.key(batch.id), batch.model_dump_json(), ex=self.ttl)
            pipe.hset(self.key(batch.id, "counts"), mapping={"done": 0, "failed": 0, "chunks_done": 0})
            pipe.expire(self.key(batch.id, "counts"), self.ttl)
            pipe.execute()
        return batch

    # -- reading ------------------------------------------------------------------------
    def get(self, batch_id: str) -> Batch:
        """The record with live progress counters: two O(1) reads.

        Raises
        ------
        JobNotFound
        """
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key(batch_id))
            pipe.hgetall(self.key(batch_id, "counts"))
            raw, counts = pipe.execute()
        if raw is None:
            raise JobNotFound(f"There is no batch {batch_id!r} (it may have expired).")
        batch = Batch.model_validate_json(raw)
        batch.progress.done = int(counts.get(b"done", 0))
        batch.progress.failed = int(counts.get(b"failed", 0))
        return batch

    def chunk(self, batch_id: str, index: int) -> list[BatchRow]:
        """The rows of one chunk."""
        raw = self.redis.get(self.key(batch_id, "chunk", index))
        if raw is None:
            raise JobNotFound(f"Chunk {index} of batch {batch_id!r} is gone (expired?).")
        return [BatchRow.model_validate(r) for r in json.loads(raw)]

    def file(self, batch_id: str, name: str) -> bytes | None:
        """An image uploaded with the batch, or None if no such file was in the zip."""
        return self.redis.get(self.key(batch_id, "file", name))

    def has_result(self, batch_id: str, index: int) -> bool:
        return bool(self.redis.exists(self.key(batch_id, "result", index)))

    def iter_results(self, batch_id: str, chunks: int) -> Iterator[BatchRowResult]:
        """Finished rows in submission order, one chunk in memory at a time."""
        for index in range(chunks):
            raw = self.redis.get(self.key(batch_id, "result", index))
            if raw is not None:
                for item in json.loads(raw):
                    yield BatchRowResult.model_validate(item)

    # -- progress -----------------------------------------------------------------------
    def record_chunk(self, batch_id: str, index: int, results: list[BatchRowResult]) -> bool:
        """Store a chunk's results and count them, once; finish the batch after the last.

        Returns
        -------
        bool
            False if the chunk had already been recorded (a redelivery): nothing changed.
        """
        done = sum(r.status == "succeeded" for r in results)
        payload = json.dumps([r.model_dump(mode="json", exclude_none=True) for r in results])
        chunks_done = int(
            self._record_chunk(
                keys=[self.key(batch_id, "result", index), self.key(batch_id, "counts"), self.key(batch_id)],
                args=[payload, done, len(results) - done, self.ttl],
            )
        )
        if chunks_done < 0:
            return False
        batch = self.get(batch_id)
        if chunks_done >= batch.chunks:
            self._transition(batch_id, JobStatus.SUCCEEDED)
        elif batch.status == JobStatus.QUEUED:
            self._transition(batch_id, JobStatus.RUNNING)
        return True

    def is_cancelled(self, batch_id: str) -> bool:
        return self.get(batch_id).status == JobStatus.CANCELLED

    def cancel(self, batch_id: str) -> Batch:
        """Cancel: chunks not yet run are skipped by the workers.

        Raises
        ------
        JobNotFound, JobNotCancellable
        """
        batch = self.get(batch_id)
        if batch.status == JobStatus.SUCCEEDED or batch.status == JobStatus.FAILED:
            raise JobNotCancellable(
                f"Batch {batch_id} already {batch.status.value}; there is nothing to cancel.",
                status_now=batch.status.value,
            )
        self._transition(batch_id, JobStatus.CANCELLED)
        return self.get(batch_id)

    def _transition(self, batch_id: str, status: JobStatus) -> None:
        key = self.key(batch_id)

        def change(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            batch = Batch.model_validate_json(raw)
            if batch.status in TERMINAL_STATUSES or batch.status == status:
                return
            update: dict[str, object] = {"status": status}
            if status in TERMINAL_STATUSES:
                update["finished_at"] = utcnow()
            pipe.multi()
            pipe.set(key, batch.model_copy(update=update).model_dump_json(), keepttl=True)

        self.redis.transaction(change, key)
