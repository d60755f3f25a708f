"""Job records and payloads in Redis, with atomic status transitions.

Records are JSON strings under ``<prefix>:job:<id>``; uploaded bytes under
``<prefix>:blob:<id>``. A new job (record, payload, idempotency key) is written in
one MULTI, one round trip. A worker starts a job in one atomic step (a Lua script
that patches the record's status, start time and attempt count); the other
transitions use WATCH/MULTI so a cancelled job is never overwritten by a late
worker, and a redelivered job that already finished keeps its first answer. The
uploaded bytes are deleted as soon as the job ends (the record and its result stay
for ``ttl_seconds``), so Redis holds payloads only for work still to do.

When a job ends, the same transaction publishes its status on
``<prefix>:done:<id>`` (:meth:`JobStore.done_channel`), so a client waiting with
``GET /v1/jobs/{id}?wait=`` is woken at once instead of polling.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from pydantic import TypeAdapter

from shared.errors import JobNotCancellable, JobNotFound, ServiceUnavailable, SkyserveError
from shared.schemas import TERMINAL_STATUSES, Job, JobResult, JobStatus, Problem, utcnow

_TIMESTAMP = TypeAdapter(datetime)

__all__ = ["DONE_CHANNEL", "JobStore", "claim_key", "new_job_id", "release_key"]

#: Channel (after the key prefix) a job's final status is published on.
DONE_CHANNEL = "done"

# Point KEYS[1] at ARGV[2] only if it still holds ARGV[1] (take over a dead claim).
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


# Start a job in one step. The record is the JSON pydantic writes for a Job: "status" is
# its second field, and a job that has not ended ends with started_at, finished_at
# (null), attempts, result (null) and error (null), so both can be patched in place
# without decoding (cjson would rewrite floats and empty lists). A record of any other
# shape answers {0} and the caller takes the WATCH/MULTI path instead.
_START = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local status = string.match(raw, '^{"id":"[0-9a-f]*","status":"(%a+)"')
if status ~= 'queued' and status ~= 'running' then
  if status then return raw end
  return {0}
end
local head, started, attempts = string.match(raw,
  '^(.*)"started_at":(.-),"finished_at":null,"attempts":(%d+),"result":null,"error":null}$')
if not head then return {0} end
if started == 'null' then started = ARGV[1] end
head = string.gsub(head, '^({"id":"[0-9a-f]*","status":)"%a+"', '%1"running"', 1)
local new = head .. '"started_at":' .. started .. ',"finished_at":null,"attempts":'
  .. (tonumber(attempts) + 1) .. ',"result":null,"error":null}'
redis.call('SET', KEYS[1], new, 'KEEPTTL')
return new
"""


def new_job_id() -> str:
    """A random, URL-safe job id."""
    return uuid.uuid4().hex


def claim_key(
    client: redis.Redis, key: str, value: str, ttl: int, *, exists: Callable[[str], bool]
) -> str | None:
    """Claim an idempotency ``key`` for ``value`` (a job or batch id) with ``SET NX``.

    Returns
    -------
    str or None
        None if this call claimed the key; else the id the key already names. A key
        whose id no longer ``exists`` (expired, deleted) is taken over atomically.
    """
    for _ in range(5):
        if client.set(key, value, nx=True, ex=ttl):
            return None
        raw = client.get(key)
        if raw is None:
            continue  # expired between the two calls: try again
        earlier = raw.decode()
        if exists(earlier):
            return earlier
        if client.eval(_REPLACE, 1, key, earlier, value, ttl):
            return None
    raise ServiceUnavailable("The idempotency key is being changed by other requests; try again.")


def release_key(client: redis.Redis, key: str, value: str) -> None:
    """Delete an idempotency ``key`` only if it still names ``value``.

    A WATCH/MULTI transaction rather than a script: a full Redis (noeviction) still
    accepts a DEL, but Redis 7 refuses any script that may write.
    """

    def delete_if_ours(pipe: redis.client.Pipeline) -> None:
        if pipe.get(key) == value.encode():
            pipe.multi()
            pipe.delete(key)

    client.transaction(delete_if_ours, key)


class JobStore:
    """Reads and writes job records in Redis.

    Parameters
    ----------
    client
        A ``redis.Redis`` client (bytes responses).
    prefix
        Key prefix, so deployments and tests can share a server.
    ttl_seconds
        Lifetime of records and payloads.
    """

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._start = client.register_script(_START)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def blob_key(self, job_id: str) -> str:
        return f"{self.prefix}:blob:{job_id}"

    def done_channel(self, job_id: str) -> str:
        """The pub/sub channel a job's final status is published on when it ends."""
        return f"{self.prefix}:{DONE_CHANNEL}:{job_id}"

    def seen_key(self, job_id: str) -> str:
        return f"{self.prefix}:seen:{job_id}"

    def put_seen_image(self, job_id: str, png: bytes) -> None:
        """Keep the image the models saw (a target's rotated, cropped cutout)."""
        self.redis.set(self.seen_key(job_id), png, ex=self.ttl)

    def seen_image(self, job_id: str) -> bytes | None:
        """The image the models saw, if the worker kept one."""
        return self.redis.get(self.seen_key(job_id))

    def idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def worker_key(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{hostname}"

    def create(
        self,
        job: Job,
        payload: bytes | None,
        *,
        idempotency_key: str | None = None,
        also: Callable[[redis.client.Pipeline, bool], object] | None = None,
    ) -> Job:
        """Store a new job and its payload, and claim its idempotency key: one round trip.

        With an ``idempotency_key`` already used, the earlier job is returned instead
        and nothing of this one is kept, so a retried POST never makes two jobs, even
        when the two requests arrive at the same moment: the record and the key's
        ``SET NX`` go in one MULTI, so whoever loses the claim finds the winner's
        record already there. ``also(pipe, undo)`` adds commands of the caller's (the
        owner's claim, the key's count of unfinished jobs) to the same transaction, and
        with ``undo=True`` their removal to the clean-up when the job is not kept.
        """
        idem = self.idempotency_key(idempotency_key) if idempotency_key is not None else None
        with self.redis.pipeline() as pipe:
            if idem is not None:
                pipe.set(idem, job.id, nx=True, ex=self.ttl)
            if payload is not None:
                pipe.set(self.blob_key(job.id), payload, ex=self.ttl)
            pipe.set(self.job_key(job.id), job.model_dump_json(), ex=self.ttl)
            if also is not None:
                also(pipe, False)
            replies = pipe.execute()
        if idem is None or replies[0]:
            return job
        # The key was taken: by a live job (return it), or by one that expired or was
        # deleted (take the key over; our record is already stored).
        earlier = claim_key(
            self.redis,
            idem,
            job.id,
            self.ttl,
            exists=lambda other: other == job.id or self.redis.exists(self.job_key(other)) > 0,
        )
        if earlier is None or earlier == job.id:
            return job
        with self.redis.pipeline() as pipe:
            pipe.delete(self.blob_key(job.id), self.job_key(job.id))
            if also is not None:
                also(pipe, True)
            pipe.execute()
        return self.get(earlier)

    def forget_idempotency_key(self, key: str, job_id: str) -> None:
        """Free ``key`` if it still names ``job_id`` (the job could not be queued, so a
        retry with the same key must make a new one)."""
        release_key(self.redis, self.idempotency_key(key), job_id)

    def get(self, job_id: str) -> Job:
        """Load a job record.

        Raises
        ------
        JobNotFound
        """
        raw = self.redis.get(self.job_key(job_id))
        if raw is None:
            raise JobNotFound(f"There is no job {job_id!r} (it may have expired).")
        return Job.model_validate_json(raw)

    def payload(self, job_id: str) -> bytes:
        """The uploaded bytes of a job.

        Raises
        ------
        JobNotFound
            If the payload expired or was never stored.
        """
        raw = self.redis.get(self.blob_key(job_id))
        if raw is None:
            raise JobNotFound(f"The payload of job {job_id!r} is gone (expired or deleted).")
        return raw

    def _update(self, job_id: str, change: Callable[[Job], Job | None]) -> Job:
        """Apply ``change`` atomically; it returns the new record or None to leave it."""
        key = self.job_key(job_id)

        def transaction(pipe: redis.client.Pipeline) -> Job:
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFound(f"There is no job {job_id!r} (it may have expired).")
            job = Job.model_validate_json(raw)
            updated = change(job)
            if updated is None:
                return job
            pipe.multi()
            pipe.set(key, updated.model_dump_json(), keepttl=True)
            if updated.status in TERMINAL_STATUSES:
                # Nothing reads the upload once the job ended; do not keep it for days.
                pipe.unlink(self.blob_key(job_id))
                # Wakes the API requests waiting on this job (GET ?wait=).
                pipe.publish(self.done_channel(job_id), updated.status.value)
            return updated

        return self.redis.transaction(transaction, key, value_from_callable=True)

    def start(self, job_id: str) -> Job:
        """Mark a job running (counting the attempt) unless it already ended.

        One atomic step (a Lua script, one round trip); a record the script does not
        recognise is changed the WATCH/MULTI way instead.

        Raises
        ------
        JobNotFound
        """
        now = _TIMESTAMP.dump_json(utcnow()).decode()
        raw = self._start(keys=[self.job_key(job_id)], args=[now])
        if raw is None:
            raise JobNotFound(f"There is no job {job_id!r} (it may have expired).")
        if isinstance(raw, list):
            return self._start_by_transaction(job_id)
        return Job.model_validate_json(raw)

    def _start_by_transaction(self, job_id: str) -> Job:
        def change(job: Job) -> Job | None:
            if job.status in TERMINAL_STATUSES:
                return None
            return job.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "started_at": job.started_at or utcnow(),
                    "attempts": job.attempts + 1,
                }
            )

        return self._update(job_id, change)

    def succeed(self, job_id: str, result: JobResult) -> Job:
        """Store the result unless the job was cancelled or already answered."""

        def change(job: Job) -> Job | None:
            if job.status in TERMINAL_STATUSES:
                return None
            progress = job.progress.model_copy(update={"done": job.progress.total})
            return job.model_copy(
                update={
                    "status": JobStatus.SUCCEEDED,
                    "result": result,
                    "progress": progress,
                    "finished_at": utcnow(),
                }
            )

        return self._update(job_id, change)

    def fail(self, job_id: str, error: SkyserveError | Problem) -> Job:
        """End a job as failed with a readable reason, unless it already ended."""
        problem = (
            error if isinstance(error, Problem) else Problem.model_validate(error.to_problem())
        )

        def change(job: Job) -> Job | None:
            if job.status in TERMINAL_STATUSES:
                return None
            progress = job.progress.model_copy(update={"failed": job.progress.pending})
            return job.model_copy(
                update={
                    "status": JobStatus.FAILED,
                    "error": problem,
                    "progress": progress,
                    "finished_at": utcnow(),
                }
            )

        return self._update(job_id, change)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; cancelling twice is harmless.

        Raises
        ------
        JobNotFound, JobNotCancellable
        """

        def change(job: Job) -> Job | None:
            if job.status == JobStatus.CANCELLED:
                return None
            if job.status in TERMINAL_STATUSES:
                raise JobNotCancellable(
                    f"Job {job_id} already {job.status.value}; there is nothing to cancel.",
                    status_now=job.status.value,
                )
            return job.model_copy(update={"status": JobStatus.CANCELLED, "finished_at": utcnow()})

        return self._update(job_id, change)

    def heartbeat(self, hostname: str, info: dict[str, Any], *, ttl_seconds: int) -> None:
        """Record that a worker is alive and what it serves."""
        self.redis.set(self.worker_key(hostname), json.dumps(info), ex=ttl_seconds)

    def workers(self) -> list[dict[str, Any]]:
        """Workers whose heartbeat has not expired."""
        keys = list(self.redis.scan_iter(match=self.worker_key("*"), count=100))
        if not keys:
            return []
        return [json.loads(v) for v in self.redis.mget(keys) if v is not None]
