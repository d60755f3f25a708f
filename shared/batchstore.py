"""Batches in Redis: chunks of rows in, chunks of results out, progress in O(1).

Layout under ``<prefix>:batch:<id>``:

- ``…`` — the :class:`~shared.schemas.Batch` record (JSON), status transitions by WATCH/MULTI;
- ``…:counts`` — a hash of ``done``, ``failed``, ``chunks_done`` counters, while the
  input is written ``stored_bytes`` and ``stored_chunks``, and once it is all written
  ``chunks`` and ``total`` (the batch is *sealed*);
- ``…:chunk:<k>`` — the rows of chunk ``k`` (JSON list of :class:`BatchRow`);
- ``…:result:<k>`` — their outcomes (JSON list of :class:`BatchRowResult`), written once;
- ``…:files`` — a hash of the image bytes uploaded inside a zip, by name.

A chunk's result is written with ``SET NX`` and the counters move in the same Lua
call, so a redelivered chunk never counts twice.

Work starts while the input is still being read: the API opens the record first
(:meth:`BatchStore.open`), enqueues each chunk as soon as it is stored, and seals the
batch with its row and chunk counts at the end (:meth:`BatchStore.seal`). Whether the
last chunk has been recorded is decided inside Redis against the sealed count
(``_RECORD_CHUNK`` and ``_SEAL`` both return what they saw), so exactly one of the
worker recording the last chunk and the API sealing finishes the batch.

Redis memory. The input of a batch (its rows and zip images) is bounded by
``max_stored_bytes`` while it is written (:class:`~shared.errors.BatchTooLarge`, 413,
past it), and kept only while it is needed: a chunk's rows go when its result is
recorded, the zip images when the last chunk is, and a cancelled batch's input
``ended_input_ttl`` seconds after the cancel (chunks already running may still read
it). Records and results stay for ``ttl_seconds``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import redis

from shared.errors import BatchTooLarge, JobNotCancellable, JobNotFound
from shared.jobstore import claim_key, release_key
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
# The chunk's rows and attempt counter (KEYS[3], KEYS[4]) are not needed after that.
# Answers {chunks recorded, chunks in the batch or -1 before it is sealed}; -1 for a
# redelivered chunk, -2 for a batch that is gone (discarded while its chunk ran: no
# key of it is made again).
_RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4]) then
  redis.call('HINCRBY', KEYS[2], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3])
  redis.call('UNLINK', KEYS[3], KEYS[4])
  local done = redis.call('HINCRBY', KEYS[2], 'chunks_done', 1)
  local total = redis.call('HGET', KEYS[2], 'chunks')
  return {done, tonumber(total or '-1')}
end
return -1
"""

# Seal: the batch holds ARGV[1] chunks of ARGV[2] rows; answers the chunks recorded so far.
_SEAL = """
redis.call('HSET', KEYS[1], 'chunks', ARGV[1], 'total', ARGV[2])
return tonumber(redis.call('HGET', KEYS[1], 'chunks_done') or '0')
"""

#: How long a cancelled batch's input stays for chunks still running (beyond the
#: worker's hard time limit, 330 s by default).
ENDED_INPUT_TTL = 600


class BatchStore:
    """Reads and writes batches in Redis (see the module docstring for the layout)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        ttl_seconds: int,
        max_stored_bytes: int | None = None,
        ended_input_ttl: int = ENDED_INPUT_TTL,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.max_stored_bytes = max_stored_bytes
        self.ended_input_ttl = ended_input_ttl
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._seal = client.register_script(_SEAL)

    def key(self, batch_id: str, *parts: object) -> str:
        return ":".join([f"{self.prefix}:batch:{batch_id}", *map(str, parts)])

    def idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idem:batch:{key}"

    # -- writing the input ------------------------------------------------------------
    def put_chunk(self, batch_id: str, index: int, rows: list[BatchRow]) -> None:
        """Store one chunk of rows (called while a catalog is still being read).

        Raises
        ------
        BatchTooLarge
            If the batch's stored input passes ``max_stored_bytes`` (call :meth:`discard`).
        """
        payload = json.dumps([r.model_dump(mode="json") for r in rows]).encode()
        chunk = self.key(batch_id, "chunk", index)
        self._put(
            batch_id,
            len(payload),
            lambda pipe: pipe.set(chunk, payload, ex=self.ttl),
            chunks=index + 1,
        )

    def put_file(self, batch_id: str, name: str, data: bytes) -> None:
        """Store an image uploaded inside a zip, for the rows that name it.

        Raises
        ------
        BatchTooLarge
            If the batch's stored input passes ``max_stored_bytes`` (call :meth:`discard`).
        """
        files = self.key(batch_id, "files")

        def write(pipe: redis.client.Pipeline) -> None:
            pipe.hset(files, name, data)
            pipe.expire(files, self.ttl)

        self._put(batch_id, len(data) + len(name), write)

    def _put(
        self,
        batch_id: str,
        size: int,
        write: Callable[[redis.client.Pipeline], object],
        *,
        chunks: int | None = None,
    ) -> None:
        counts = self.key(batch_id, "counts")
        with self.redis.pipeline() as pipe:
            pipe.hincrby(counts, "stored_bytes", size)
            if chunks is not None:
                pipe.hset(counts, "stored_chunks", chunks)
            pipe.expire(counts, self.ttl)
            write(pipe)
            stored = int(pipe.execute()[0])
        # Checked after the write (one chunk or file too many at most), so that the
        # count and the data move together; the caller discards the batch.
        if self.max_stored_bytes is not None and stored > self.max_stored_bytes:
            raise BatchTooLarge(
                f"The batch would take more than {self.max_stored_bytes:,} bytes in the job "
                "store once unpacked; split it into smaller batches.",
                max_stored_bytes=self.max_stored_bytes,
            )

    def discard(self, batch_id: str) -> None:
        """Delete everything stored for a batch (its input could not be accepted)."""
        counts = self.redis.hgetall(self.key(batch_id, "counts"))
        chunks = max(int(counts.get(b"stored_chunks", 0)), int(counts.get(b"chunks_done", 0)))
        keys = [self.key(batch_id), self.key(batch_id, "counts"), self.key(batch_id, "files")]
        for index in range(chunks):
            keys += [self.key(batch_id, part, index) for part in ("chunk", "result", "attempts")]
        for start in range(0, len(keys), 1000):
            self.redis.unlink(*keys[start : start + 1000])

    def claim_idempotency_key(self, key: str, batch_id: str) -> Batch | None:
        """Tie ``key`` to ``batch_id`` (stored already); returns the earlier batch if
        the key was taken first, in which case the caller discards its own."""
        earlier = claim_key(
            self.redis,
            self.idempotency_key(key),
            batch_id,
            self.ttl,
            exists=lambda other: self.redis.exists(self.key(other)) > 0,
        )
        return None if earlier is None else self.get(earlier)

    def forget_idempotency_key(self, key: str, batch_id: str) -> None:
        """Free ``key`` if it still names ``batch_id`` (the batch could not be queued)."""
        release_key(self.redis, self.idempotency_key(key), batch_id)

    def open(self, batch: Batch) -> Batch:
        """Store the record of a batch whose input is about to be read (status queued,
        counters at zero); its chunks may be enqueued as they are stored, and
        :meth:`seal` says how many there are once all are."""
        with self.redis.pipeline() as pipe:
            pipe.set(self.key(batch.id), batch.model_dump_json(), ex=self.ttl)
            pipe.hset(self.key(batch.id, "counts"), mapping={"done": 0, "failed": 0, "chunks_done": 0})
            pipe.expire(self.key(batch.id, "counts"), self.ttl)
            pipe.execute()
        return batch

    def seal(self, batch_id: str, *, columns: list[str], id_column: str, rows: int, chunks: int) -> Batch:
        """Record that every chunk is stored: its columns, rows and chunks; finish the
        batch if its workers have recorded every chunk already.

        Raises
        ------
        JobNotFound
        """
        key = self.key(batch_id)

        def complete(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFound(f"There is no batch {batch_id!r} (it may have expired).")
            batch = Batch.model_validate_json(raw)
            batch.columns, batch.id_column, batch.chunks = columns, id_column, chunks
            batch.progress.total = rows
            pipe.multi()
            pipe.set(key, batch.model_dump_json(), keepttl=True)

        # The record first: whoever sees the last chunk recorded then reads it complete.
        self.redis.transaction(complete, key)
        recorded = int(self._seal(keys=[self.key(batch_id, "counts")], args=[chunks, rows]))
        if recorded >= chunks:
            self._finish(batch_id)
        return self.get(batch_id)

    def create(self, batch: Batch) -> Batch:
        """Store a batch whose chunks are all stored already (open and seal at once)."""
        self.open(batch)
        self.redis.hset(
            self.key(batch.id, "counts"), mapping={"chunks": batch.chunks, "total": batch.progress.total}
        )
        return batch

    def sealed(self, batch_id: str) -> bool | None:
        """Whether every chunk of a batch is stored; None if the batch does not exist."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.key(batch_id))
            pipe.hexists(self.key(batch_id, "counts"), "chunks")
            exists, sealed = pipe.execute()
        return bool(sealed) if exists else None

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
        return self.redis.hget(self.key(batch_id, "files"), name)

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
        outcome = self._record_chunk(
            keys=[
                self.key(batch_id, "result", index),
                self.key(batch_id, "counts"),
                self.key(batch_id, "chunk", index),
                self.key(batch_id, "attempts", index),
            ],
            args=[payload, done, len(results) - done, self.ttl],
        )
        if not isinstance(outcome, list):
            return False  # recorded before (-1), or the batch is gone (-2)
        chunks_done, chunks = int(outcome[0]), int(outcome[1])
        if 0 <= chunks <= chunks_done:
            self._finish(batch_id)
        elif self.get(batch_id).status == JobStatus.QUEUED:
            self._transition(batch_id, JobStatus.RUNNING)
        return True

    def _finish(self, batch_id: str) -> None:
        self._transition(batch_id, JobStatus.SUCCEEDED)
        self.redis.unlink(self.key(batch_id, "files"))  # every row has run

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
        # Chunks not yet run never will be; running ones may still read their files.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(self.key(batch_id, "files"), self.ended_input_ttl)
            for index in range(batch.chunks):
                pipe.expire(self.key(batch_id, "chunk", index), self.ended_input_ttl)
                if index % 1000 == 999:
                    pipe.execute()
            pipe.execute()
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
