"""A daemon thread that keeps a worker process's heartbeat key alive in Redis.

The API's ``/readyz`` counts live workers from these keys (``JobStore.workers()``);
a key expires ``ttl`` seconds after the last beat, so a dead process drops out on
its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shared.jobstore import JobStore

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """Writes ``describe()`` under the worker's key every ``interval`` seconds.

    Parameters
    ----------
    store
        Where the key lives.
    name
        The worker's key name (unique per process).
    describe
        Returns the JSON-able record to write.
    interval, ttl
        Seconds between beats, and how long one beat counts.
    housekeeping
        Run before every beat but the first (the worker loads new model versions here,
        off the request path); failures are logged, never fatal.
    prepare
        Run once after the first beat (the worker's warm-up).
    """

    def __init__(
        self,
        store: JobStore,
        name: str,
        describe: Callable[[], dict[str, Any]],
        *,
        interval: float,
        ttl: int,
        housekeeping: Callable[[], object] | None = None,
        prepare: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.describe = describe
        self.interval = interval
        self.ttl = ttl
        self.housekeeping = housekeeping
        self.prepare = prepare
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, *, forget: bool = True, timeout: float = 5.0) -> None:
        """Stop beating; with ``forget``, delete the key so the worker drops out at once."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if forget:
            try:
                self.store.redis.delete(self.store.worker_key(self.name))
            except Exception:  # shutting down: a missing Redis must not block it
                logger.warning("Could not remove heartbeat %s.", self.name, exc_info=True)

    def beat(self) -> None:
        """Write one heartbeat now."""
        self.store.heartbeat(self.name, self.describe(), ttl_seconds=self.ttl)

    def _run(self) -> None:
        self._safely(self.beat, "heartbeat")
        if self.prepare is not None:
            self._safely(self.prepare, "warm-up")
        while not self._stop.is_set():
            if self.housekeeping is not None:
                self._safely(self.housekeeping, "housekeeping")
            self._safely(self.beat, "heartbeat")
            if self._stop.wait(self.interval):
                break

    def _safely(self, step: Callable[[], object], what: str) -> None:
        if self._stop.is_set():
            return
        try:
            step()
        except Exception:  # a failed beat must not end the thread: the next may work
            logger.warning("Worker %s: %s failed.", self.name, what, exc_info=True)
