"""The lease book against a real Redis: who holds a unit, until when, and who may take it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from shared.leases import Holder, LeaseBook, chunk_unit, job_unit, process_identity

HERE = process_identity()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def book(client: redis.Redis, prefix: str, lease_seconds: float = 30.0) -> LeaseBook:
    return LeaseBook(client, prefix=prefix, lease_seconds=lease_seconds)


def take(leases: LeaseBook, unit: str, owner: str, **kw: object) -> tuple[bool, Holder | None]:
    return leases.acquire(unit, owner, queue="q", identity=HERE, pid=os.getpid(), **kw)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_owner_at_a_time_until_it_releases(client: redis.Redis, key_prefix: str) -> None:
    leases = book(client, key_prefix)
    unit = job_unit("j1")

    assert take(leases, unit, "a") == (True, None)
    assert take(leases, unit, "a")[0]  # the holder may take it again (a redelivery to itself)
    acquired, holder = take(leases, unit, "b")
    assert not acquired and holder is not None and holder.owner == "a" and holder.queue == "q"
    assert 25 < leases.units()[unit] - time.time() <= 31

    assert not leases.release(unit, "b")  # only the holder lets go
    assert leases.release(unit, "a")
    assert leases.units() == {} and leases.holder(unit) is None
    assert take(leases, unit, "b")[0]


def test_a_lease_that_ran_out_is_listed_and_can_be_taken(
    client: redis.Redis, key_prefix: str
) -> None:
    leases = book(client, key_prefix, lease_seconds=0.2)
    unit = chunk_unit("b1", 3)
    take(leases, unit, "a")
    assert leases.expired() == []

    time.sleep(0.3)
    [(expired, holder)] = leases.expired()
    assert (expired, holder.owner) == (unit, "a")
    assert take(leases, unit, "b")[0]
    assert leases.renew([unit], "a") == [unit]  # the old holder learns it lost it
    assert leases.renew([unit], "b") == []


def test_renewing_keeps_a_lease_alive(client: redis.Redis, key_prefix: str) -> None:
    leases = book(client, key_prefix, lease_seconds=0.3)
    unit = job_unit("j2")
    take(leases, unit, "a")
    for _ in range(4):
        time.sleep(0.15)
        assert leases.renew([unit], "a") == []
    assert leases.expired() == []
    assert not take(leases, unit, "b")[0]


def test_a_handed_back_unit_is_free_but_still_watched(client: redis.Redis, key_prefix: str) -> None:
    leases = book(client, key_prefix)
    unit = job_unit("j3")
    take(leases, unit, "a")

    assert leases.hand_back(unit, "a", within_seconds=0.2)
    assert leases.holder(unit).owner == ""
    assert take(leases, unit, "b")[0]  # the retry, on any process

    take_back = job_unit("j4")
    take(leases, take_back, "a")
    leases.hand_back(take_back, "a", within_seconds=0.2)
    time.sleep(0.3)
    assert [u for u, _ in leases.expired()] == [take_back]  # the retry never came


def test_forget_leaves_a_unit_that_was_taken_meanwhile(
    client: redis.Redis, key_prefix: str
) -> None:
    leases = book(client, key_prefix, lease_seconds=0.2)
    unit = job_unit("j5")
    take(leases, unit, "a")
    time.sleep(0.3)
    [(_, stale)] = leases.expired()
    take(leases, unit, "b")  # a worker took the re-enqueued copy before the sweeper forgot it

    assert not leases.forget(unit, stale.grant)
    assert leases.holder(unit).owner == "b"
    time.sleep(0.3)
    [(_, current)] = leases.expired()
    assert leases.forget(unit, current.grant)
    assert leases.units() == {}


def test_a_dead_neighbour_is_recognised_by_its_pid() -> None:
    alive = Holder(owner="x", grant="g", queue="q", host=HERE, pid=os.getpid())
    dead = Holder(owner="x", grant="g", queue="q", host=HERE, pid=dead_pid())
    elsewhere = Holder(owner="x", grant="g", queue="q", host="other-host|pid:[1]", pid=dead.pid)

    assert not alive.is_dead_neighbour(HERE)
    assert dead.is_dead_neighbour(HERE)
    assert not elsewhere.is_dead_neighbour(HERE)  # another machine's pid says nothing here


def test_taking_over_from_a_dead_holder(client: redis.Redis, key_prefix: str) -> None:
    leases = book(client, key_prefix)
    unit = job_unit("j6")
    gone = dead_pid()
    leases.acquire(unit, "dead-owner", queue="q", identity=HERE, pid=gone)

    acquired, holder = take(leases, unit, "b")
    assert not acquired and holder.is_dead_neighbour(HERE)
    assert not take(leases, unit, "b", take_from="someone-else")[0]
    assert take(leases, unit, "b", take_from=holder.owner)[0]
    assert leases.holder(unit).owner == "b"
