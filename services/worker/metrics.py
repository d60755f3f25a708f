"""Prometheus metrics of a worker process.

Only the micro-batch size lives here so far; exposing the registry over HTTP is the
worker's metrics endpoint's business, not this module's.
"""

from __future__ import annotations

from prometheus_client import Histogram

__all__ = ["BATCH_SIZE"]

BATCH_SIZE = Histogram(
    "skyserve_worker_batch_size",
    "Single-image jobs answered by one ensemble run of a task (1: the job ran alone).",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
