"""``skyserve-local`` (what ``make run`` starts) as a real process: it refuses a Redis it
did not start, answers ready only once its worker loaded the models, and SIGTERM stops
the worker and the Redis it started along with the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.local_stack import free_port
from shared.settings import REPO_ROOT
from tests.helpers.faults import alive, process_tree
from tests.helpers.processes import start_redis, stop
from tests.helpers.tiny_models import publish_tiny_regression

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def local_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SKYSERVE_REDIS_URL")}
    return {
        **env,
        "SKYSERVE_LOCAL_DATA_DIR": str(tmp / "var"),
        "SKYSERVE_HOST": "127.0.0.1",
        **extra,
    }


def skyserve_local(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.local_stack"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[int]:
    """Another checkout's Redis, already listening on a port."""
    url, proc = start_redis(tmp_path / "theirs")
    yield int(url.rsplit(":", 1)[1].split("/")[0])
    stop(proc)


def test_it_refuses_a_redis_it_did_not_start(foreign_redis: int, tmp_path: Path) -> None:
    log = tmp_path / "local.log"
    env = local_env(
        tmp_path, SKYSERVE_LOCAL_REDIS_PORT=str(foreign_redis), SKYSERVE_PORT=str(free_port())
    )
    proc = skyserve_local(env, log)
    try:
        assert proc.wait(60) == 1
    finally:
        kill_family(proc, process_tree(proc.pid))
    text = log.read_text()
    assert f"Port {foreign_redis} is taken by a Redis this command did not start" in text
    assert "SKYSERVE_LOCAL_REDIS_PORT" in text and "Started a worker" not in text


def test_it_refuses_a_taken_api_port_before_starting_anything(tmp_path: Path) -> None:
    import socket

    log = tmp_path / "local.log"
    with socket.socket() as taken:  # another skyserve's API, say
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = local_env(
            tmp_path, SKYSERVE_LOCAL_REDIS_PORT=str(free_port()), SKYSERVE_PORT=str(port)
        )
        proc = skyserve_local(env, log)
        try:
            assert proc.wait(60) == 1
        finally:
            kill_family(proc, process_tree(proc.pid))
    text = log.read_text()
    assert f"The API cannot listen on 127.0.0.1:{port}" in text and "SKYSERVE_PORT" in text
    assert "Started embedded Redis" not in text and "Started a worker" not in text


@pytest.mark.slow
def test_sigterm_stops_the_api_the_worker_and_redis(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_tiny_regression(models)
    port, log = free_port(), tmp_path / "local.log"
    env = local_env(
        tmp_path,
        SKYSERVE_LOCAL_REDIS_PORT=str(free_port()),
        SKYSERVE_PORT=str(port),
        SKYSERVE_MODELS_DIR=str(models),
        SKYSERVE_KEY_PREFIX=f"local-{port}",
        SKYSERVE_CELERY_QUEUE=f"local-{port}",
    )
    proc = skyserve_local(env, log)
    family = [proc.pid]
    try:
        answers = []
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as http:
            while True:
                try:
                    resp = http.get(f"http://127.0.0.1:{port}/readyz")
                    answers.append(resp)
                    if resp.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        # Ready means a worker has its models loaded, never just "a worker exists".
        workers = answers[-1].json()["workers"]
        assert workers and all(w["ready"] and w["served"] == {"inclination": 1} for w in workers)

        family = process_tree(proc.pid)
        assert len(family) >= 4, family  # skyserve-local, redis-server, celery main + child
        proc.send_signal(signal.SIGTERM)  # what `kill`, systemd or make's own SIGTERM sends
        assert proc.wait(60) in (0, 128 + signal.SIGTERM), log.read_text()
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in family):
            assert time.monotonic() < deadline, [p for p in family if alive(p)]
            time.sleep(0.1)
    finally:
        kill_family(proc, family)


def kill_family(proc: subprocess.Popen[bytes], family: list[int]) -> None:
    """Leave nothing behind, whatever the test found (a regression must not leak), and
    touch no other process: only pids still running this environment's programs."""
    ours = str(Path(sys.executable).parent.parent)
    for pid in {*family, *process_tree(proc.pid)}:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ours in cmdline and alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
