"""Prometheus metrics of the API process.

Requests and their latency by route and status (``skyserve_http_request_seconds``,
observed once per request by :mod:`services.api.access_log`), jobs and batches
accepted, problems answered by code, how waiting requests were woken, and, read from
Redis when scraped, the depth of the Celery queue (:class:`QueueDepth`).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "JOBS_SUBMITTED",
    "JOBS_CANCELLED",
    "PROBLEMS",
    "REQUEST_SECONDS",
    "WAIT_WAKEUPS",
    "QueueDepth",
    "watch_queue",
]

JOBS_SUBMITTED = Counter(
    "skyserve_jobs_submitted_total", "Jobs accepted by the API.", ["kind"]
)
JOBS_CANCELLED = Counter(
    "skyserve_jobs_cancelled_total", "Jobs and batches cancelled through the API.", ["kind"]
)
PROBLEMS = Counter(
    "skyserve_problems_total", "Client-visible errors answered, by problem code.", ["code"]
)
REQUEST_SECONDS = Histogram(
    "skyserve_http_request_seconds",
    "Time to answer HTTP requests.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WAIT_WAKEUPS = Counter(
    "skyserve_wait_wakeups_total",
    "Wake-ups of GET /v1/jobs/{id}?wait= requests: by the job's end notice, or by the "
    "fallback timer (a notice missed, or the job still running).",
    ["by"],
)


class QueueDepth(Collector):
    """``skyserve_queue_depth``: messages waiting in the Celery queue, read at scrape time.

    One ``LLEN`` per scrape (the Redis transport keeps a queue as a list); a Redis that
    cannot be reached gives no sample rather than a failed scrape.
    """

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.redis = client
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "skyserve_queue_depth", "Tasks waiting in the Celery queue (not yet taken).", labels=["queue"]
        )
        try:
            family.add_metric([self.queue], float(self.redis.llen(self.queue)))
        except redis.RedisError:
            pass
        yield family


_queue_collector: QueueDepth | None = None


def watch_queue(client: redis.Redis, queue: str) -> None:
    """Report the depth of ``queue`` from this process's registry (the latest app wins)."""
    global _queue_collector
    if _queue_collector is not None:
        REGISTRY.unregister(_queue_collector)
    _queue_collector = QueueDepth(client, queue)
    REGISTRY.register(_queue_collector)
