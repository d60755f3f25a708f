"""Schemathesis against the API's own OpenAPI: every check, no failure allowed.

Starts a throw-away Redis, a real worker (on the committed models; no cutout service,
so target jobs fail fast) and the real API (keys on, an admin key in every request,
rate and job limits off so that generated cases reach the handlers), then runs the
``schemathesis`` CLI with ``--checks all`` over every operation, configured by the
repository's ``schemathesis.toml``. Used twice:

- the test suite runs a short pass (``tests/fuzz/test_openapi_fuzz.py``);
- ``make fuzz`` runs the long one: ``python -m tests.fuzz.openapi_fuzz --max-examples 100``
  (14 operations x 100 examples, plus stateful and coverage phases: >= 1,000 cases).

It prints schemathesis's summary and exits with its status (0 = no failure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import redis

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.local_stack import start_redis, stop
from shared.apikeys import KeyStore
from shared.settings import REPO_ROOT
from tests.helpers.live_server import serve
from tests.helpers.processes import running_worker, worker_env

__all__ = ["run_fuzz"]


def run_fuzz(
    redis_url: str, *, max_examples: int, seed: int | None = None, report: Path | None = None,
    extra: list[str] | None = None,
) -> tuple[int, str]:
    """Run schemathesis against a live API on ``redis_url``; returns ``(exit code, output)``."""
    prefix = f"fuzz-{uuid.uuid4().hex[:8]}"
    settings = ApiSettings(
        redis_url=redis_url,
        key_prefix=prefix,
        celery_queue=prefix,
        models_dir=REPO_ROOT / "models",
        auth_mode="keys",
        rate_limit_per_minute=0,
        max_active_jobs_per_key=0,
        max_wait_seconds=0.5,
    )
    client = redis.Redis.from_url(redis_url)
    token, _ = KeyStore(client, prefix=prefix).create(["admin"], note="schemathesis")
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(REPO_ROOT / "schemathesis.toml"),
        "run",
        "--checks", "all",
        "--max-examples", str(max_examples),
        "--header", f"Authorization: Bearer {token}",
        "--request-timeout", "30",
        "--workers", "1",
        "--suppress-health-check", "all",
        "--generation-deterministic" if seed is None else f"--seed={seed}",
    ]
    if report is not None:
        command += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    command += extra or []
    env = worker_env(
        redis_url=redis_url, key_prefix=prefix, models_dir=settings.models_dir,
        cutout_provider="none", max_image_pixels=4_000_000,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp, running_worker(
            env, log_file=Path(tmp) / "worker.log", served="inclination"
        ), serve(create_app(settings)) as live:
            command.append(f"{live.url}/openapi.json")
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        keys += list(client.scan_iter(match=f"_kombu.binding.{prefix}*", count=100))
        if keys:
            client.delete(*keys)
        client.delete(prefix)
        client.close()
    return done.returncode, done.stdout + done.stderr


def count_cases(report: Path) -> int:
    """How many test cases a run's NDJSON report says were sent."""
    cases = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for name, body in event.items():
            if name == "ScenarioFinished":
                cases += len((body.get("recorder") or {}).get("cases") or {})
    return cases


def main() -> None:
    """``python -m tests.fuzz.openapi_fuzz [--max-examples N]`` (what ``make fuzz`` runs)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, proc = start_redis(Path(tmp) / "redis", appendonly=False)
        report = Path(tmp) / "events.ndjson"
        try:
            code, output = run_fuzz(url, max_examples=args.max_examples, seed=args.seed, report=report)
        finally:
            stop(proc)
        print(output)
        if report.is_file():
            print(f"test cases sent: {count_cases(report)}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
