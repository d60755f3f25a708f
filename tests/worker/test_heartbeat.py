"""The heartbeat thread against a real Redis: beats, survives failures, forgets on stop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from services.worker.heartbeat import Heartbeat
from shared.jobstore import JobStore


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_url)
    yield JobStore(client, prefix=key_prefix, ttl_seconds=60)
    client.close()


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_beats_until_stopped_then_forgets(store: JobStore) -> None:
    beats = []

    def describe() -> dict:
        beats.append(time.monotonic())
        return {"hostname": "w1", "pid": 1, "n": len(beats)}

    warmed = []
    heartbeat = Heartbeat(
        store, "w1/1", describe, interval=0.02, ttl=5, prepare=lambda: warmed.append(True)
    )
    heartbeat.start()
    wait_for(lambda: len(beats) >= 4)

    assert warmed == [True]
    assert store.workers()[0]["hostname"] == "w1"
    assert 0 < store.redis.ttl(store.worker_key("w1/1")) <= 5

    heartbeat.stop()
    assert not heartbeat.alive
    assert store.workers() == []


def test_a_failing_step_does_not_end_the_thread(store: JobStore) -> None:
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("registry volume hiccup")

    heartbeat = Heartbeat(
        store, "w2/2", lambda: {"pid": 2}, interval=0.02, ttl=5, housekeeping=flaky
    )
    heartbeat.start()
    wait_for(lambda: len(calls) >= 4)

    assert heartbeat.alive and store.workers() == [{"pid": 2}]
    heartbeat.stop()
