"""The spine's stack: real Redis, a real worker process on the committed default models,
and the API from the factory, shared by a test module; and the fault tests' figures,
printed at the end of the run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.registry import RegistryReader
from shared.settings import REPO_ROOT
from tests.helpers.processes import running_worker, worker_env

#: The default models committed in the repository (``make models`` rebuilds them).
DEFAULT_MODELS: Path = REPO_ROOT / "models"


@dataclass(frozen=True)
class Stack:
    """A running system: the API client, its settings and the worker's log."""

    client: TestClient
    settings: ApiSettings
    worker_log: Path


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A missing default model is a defect of the repository, not a reason to skip.
    assert RegistryReader(DEFAULT_MODELS).tasks(), f"no default model under {DEFAULT_MODELS}"
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("spine") / "worker.log"
    env = worker_env(redis_url=redis_url, key_prefix=prefix, models_dir=DEFAULT_MODELS)
    settings = ApiSettings(
        redis_url=redis_url,
        key_prefix=prefix,
        celery_queue=prefix,
        models_dir=DEFAULT_MODELS,
        max_wait_seconds=10.0,
    )
    try:
        # The prefork pool, as deployed: a child process runs the ensemble.
        with running_worker(env, log_file=log, pool="prefork", served="inclination"):
            with TestClient(create_app(settings), raise_server_exceptions=False) as client:
                yield Stack(client=client, settings=settings, worker_log=log)
    finally:
        client_ = redis.Redis.from_url(redis_url)
        keys = list(client_.scan_iter(match=f"{prefix}*", count=500))
        keys += list(client_.scan_iter(match=f"_kombu.binding.{prefix}*", count=500))
        if keys:
            client_.delete(*keys)
        client_.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what each fault scenario measured (``record_property("fault", line)``)."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", [])
        if name == "fault"
    ]
    if lines:
        terminalreporter.section("fault scenarios: rows or jobs, and recovery time")
        for line in lines:
            terminalreporter.write_line(line)
