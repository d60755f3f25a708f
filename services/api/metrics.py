"""Prometheus metrics of the API process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["JOBS_SUBMITTED", "PROBLEMS", "REQUEST_SECONDS"]

JOBS_SUBMITTED = Counter(
    "skyserve_jobs_submitted_total", "Jobs accepted by the API.", ["kind"]
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
