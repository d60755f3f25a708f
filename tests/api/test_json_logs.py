"""With SKYSERVE_LOG_FORMAT=json (the compose default) the API's output is one JSON object
per line once the app runs: uvicorn's own lines included, its access lines replaced by
skyserve.access (which carries the request id)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from services.local_stack import free_port
from shared.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_json_log_lines_only_once_the_app_runs(redis_url: str, key_prefix: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SKYSERVE_REDIS_URL": redis_url,
        "SKYSERVE_KEY_PREFIX": key_prefix,
        "SKYSERVE_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "services.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs/nosuch", timeout=5).status_code == 422
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    lines = output.splitlines()
    started = next(i for i, line in enumerate(lines) if "Waiting for application startup" in line)
    entries = [json.loads(line) for line in lines[started + 1 :] if line.strip()]  # all JSON
    assert any(
        e["logger"] == "uvicorn.error" and "startup complete" in e["message"] for e in entries
    )
    access = [e for e in entries if e["logger"] == "skyserve.access"]
    assert {e["path"] for e in access} >= {"/healthz", "/v1/jobs/nosuch"}
    assert all(e.get("request_id") for e in access)
