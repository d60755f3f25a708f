"""Leases on running work (a job, or one chunk of a batch), kept in Redis.

Why leases. A Celery message is acknowledged late (after its task ends), so a task
whose *process* dies is handed back at once by the worker's main process
(``reject_on_worker_lost``). But when a whole worker dies (main process and children,
a lost machine or container) or Redis restarts, the message sits in the Redis
transport's "unacked" set until the broker's ``visibility_timeout`` passes. That
timeout has to exceed the longest task, or a slow task is handed to a second worker
while it still runs; so it cannot be minutes. A lease can: it says "process P runs
this unit until T", P renews it every few seconds while it works, and a sweeper
re-enqueues any unit whose lease ran out. Recovery after a whole worker dies then
takes about ``lease_seconds`` plus one sweep interval, whatever the longest task.

The guarantee does not get weaker: nothing is ever removed from the lease book
before its unit ended or a fresh message for it is in the queue, and every way of
ending a unit is idempotent (a job never leaves a terminal state; a chunk's result is
written once with its counters, see :mod:`shared.batchstore`), so the rare duplicate
run (a lease stolen from a process that was only stalled) costs time, never a second
count.

Layout under ``<prefix>``:

- ``…:leases`` — a sorted set, unit → expiry (Redis server time, seconds);
- ``…:lease-holders`` — a hash, unit → JSON ``{owner, grant, queue, host, pid, since}``.

Times come from the Redis server (``TIME`` inside the scripts), so workers on several
machines agree on when a lease ran out whatever their clocks say.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["Holder", "LeaseBook", "chunk_unit", "job_unit", "process_identity"]

# Acquire ``unit`` for ``owner`` unless another owner holds it and its lease has not
# run out. A handed-back unit (owner "") is free to take. Returns {1, grant} on
# success, else {0, the holder's JSON}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if score and raw then
  local holder = cjson.decode(raw)
  if tonumber(score) > now and holder.owner ~= '' and holder.owner ~= ARGV[2]
     and holder.owner ~= ARGV[5] then
    return {0, raw}
  end
end
local grant = ARGV[3]
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({
  owner = ARGV[2], grant = grant, queue = ARGV[6], host = ARGV[7],
  pid = tonumber(ARGV[8]), since = now}))
return {1, grant}
"""

# Extend the leases of the given units that ``owner`` still holds; returns the units
# it no longer holds (taken over after they ran out, or removed).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lost = {}
for i = 3, #ARGV do
  local raw = redis.call('HGET', KEYS[2], ARGV[i])
  if raw and cjson.decode(raw).owner == ARGV[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# Remove ``unit`` (mode "release") or hand it back (mode "handoff": no owner, lease
# running ``ARGV[4]`` more seconds, so the sweeper re-enqueues it if nobody takes it),
# only if ``owner`` still holds it.
_LET_GO = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local holder = cjson.decode(raw)
if holder.owner ~= ARGV[2] then return 0 end
if ARGV[3] == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
holder.owner = ''
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(holder))
return 1
"""

# Up to ARGV[1] units whose lease ran out, with their holders: {unit, holder, ...}.
_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local units = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, unit in ipairs(units) do
  table.insert(out, unit)
  table.insert(out, redis.call('HGET', KEYS[2], unit) or '{}')
end
return out
"""

# Forget ``unit`` if it is still the grant the sweeper saw and its lease is still out:
# a unit taken (new grant) or renewed meanwhile is left alone.
_FORGET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not score then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
if tonumber(score) > now then return 0 end
if raw and cjson.decode(raw).grant ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


def job_unit(job_id: str) -> str:
    """The lease book's name for a single-image job."""
    return f"job:{job_id}"


def chunk_unit(batch_id: str, chunk: int) -> str:
    """The lease book's name for one chunk of a batch."""
    return f"chunk:{batch_id}:{chunk}"


def process_identity() -> str:
    """Which process table this process lives in: the host name plus, on Linux, the
    PID namespace (two containers may share a host name but never a PID namespace).

    Two owners with the same identity can test each other's pids for life.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


@dataclass(frozen=True)
class Holder:
    """Who holds a unit's lease, as stored."""

    owner: str
    grant: str
    queue: str
    host: str
    pid: int | None

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Holder:
        data: dict[str, Any] = json.loads(raw or "{}")
        pid = data.get("pid")
        return cls(
            owner=str(data.get("owner") or ""),
            grant=str(data.get("grant") or ""),
            queue=str(data.get("queue") or ""),
            host=str(data.get("host") or ""),
            pid=int(pid) if isinstance(pid, int | float) else None,
        )

    def is_dead_neighbour(self, identity: str) -> bool:
        """True if the holder lived in this process table and its pid is gone.

        That is the case right after a prefork child was killed: the worker's main
        process hands the message back at once and a sibling may take it over without
        waiting for the lease to run out. Anything else (another host, a live pid) is
        treated as alive; its lease running out is the proof of death.
        """
        if not self.owner or self.host != identity or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process reuses the pid: it is alive
            return False
        return False


class LeaseBook:
    """The leases of running work in Redis (see the module docstring).

    Parameters
    ----------
    client
        A ``redis.Redis`` client.
    prefix
        Key prefix of the deployment.
    lease_seconds
        How long a lease lasts after each renewal.
    """

    def __init__(self, client: redis.Redis, *, prefix: str, lease_seconds: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.keys = [f"{prefix}:leases", f"{prefix}:lease-holders"]
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._let_go = client.register_script(_LET_GO)
        self._expired = client.register_script(_EXPIRED)
        self._forget = client.register_script(_FORGET)

    def acquire(
        self,
        unit: str,
        owner: str,
        *,
        queue: str,
        identity: str,
        pid: int,
        take_from: str = "",
    ) -> tuple[bool, Holder | None]:
        """Take the lease on ``unit`` for ``owner``.

        It succeeds when nobody holds the unit, its lease ran out, it was handed back,
        ``owner`` already holds it, or ``take_from`` names the current (dead) owner.

        Returns
        -------
        (acquired, holder)
            ``holder`` is the other owner when not acquired.
        """
        grant = uuid.uuid4().hex
        ok, value = self._acquire(
            keys=self.keys,
            args=[unit, owner, grant, self.lease_seconds, take_from or owner, queue, identity, pid],
        )
        if int(ok) == 1:
            return True, None
        return False, Holder.parse(value)

    def renew(self, units: list[str], owner: str) -> list[str]:
        """Extend ``owner``'s leases on ``units``; returns those it no longer holds."""
        if not units:
            return []
        lost = self._renew(keys=self.keys, args=[owner, self.lease_seconds, *units])
        return [u.decode() if isinstance(u, bytes) else str(u) for u in lost]

    def release(self, unit: str, owner: str) -> bool:
        """The unit ended: remove its lease (only if ``owner`` still holds it)."""
        return bool(self._let_go(keys=self.keys, args=[unit, owner, "release", 0]))

    def hand_back(self, unit: str, owner: str, *, within_seconds: float) -> bool:
        """The unit will run again (a retry is queued): give up ownership but keep the
        entry, so that if the retry never comes the sweeper re-enqueues it after
        ``within_seconds``."""
        return bool(self._let_go(keys=self.keys, args=[unit, owner, "handoff", within_seconds]))

    def expired(self, limit: int = 100) -> list[tuple[str, Holder]]:
        """Units whose lease ran out, oldest first, at most ``limit``."""
        flat = self._expired(keys=self.keys, args=[limit])
        pairs = []
        for unit, raw in zip(flat[::2], flat[1::2], strict=True):
            pairs.append(
                (unit.decode() if isinstance(unit, bytes) else str(unit), Holder.parse(raw))
            )
        return pairs

    def forget(self, unit: str, grant: str) -> bool:
        """Remove an expired entry the sweeper dealt with, unless it changed meanwhile."""
        return bool(self._forget(keys=self.keys, args=[unit, grant]))

    def holder(self, unit: str) -> Holder | None:
        """The unit's current holder, or None if it holds no lease."""
        raw = self.redis.hget(self.keys[1], unit)
        return None if raw is None else Holder.parse(raw)

    def units(self) -> dict[str, float]:
        """Every unit in the book with its expiry (for tests and operators)."""
        return {
            (u.decode() if isinstance(u, bytes) else str(u)): float(s)
            for u, s in self.redis.zrange(self.keys[0], 0, -1, withscores=True)
        }
