"""The install users get is the install we test: ``api,worker,local`` extras only.

``make run`` and the worker image install the serving extras, never the trainer's
(TensorFlow, matplotlib, GalSim). This test builds that environment from scratch in a
fresh virtualenv (pip's cache keeps it to a minute or two), checks that the trainer's
packages are really absent there, then starts the whole system from it with its own
``skyserve-local`` (an embedded Redis, a real Celery worker, the API) and runs a FITS
upload, a PNG upload and a catalogued target through it. A target's cutout comes from
a local stand-in for the survey service.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.local_stack import free_port, stop
from tests.helpers.cutout_server import CutoutStandIn, running_stand_in
from tests.helpers.images import ellipse, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
SERVING_EXTRAS = "api,worker,local"
#: Packages only the trainer extra brings; none may be importable in the serving install.
TRAINER_ONLY = ("tensorflow", "matplotlib", "tf2onnx", "galsim", "keras")


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with ``pip install -e '.[api,worker,local]'`` and nothing else."""
    venv = tmp_path_factory.mktemp("serving-install") / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        [str(python), "-m", "pip", "install", "--quiet", "-e", f".[{SERVING_EXTRAS}]"],
        cwd=REPO,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


@dataclass(frozen=True)
class ServingSystem:
    url: str
    log: Path
    stand_in: CutoutStandIn


@pytest.fixture(scope="module")
def serving_system(
    serving_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingSystem]:
    """``skyserve-local`` from the serving virtualenv: its own Redis, worker and API."""
    data = tmp_path_factory.mktemp("serving-system")
    port, redis_port = free_port(), free_port()
    log = data / "skyserve-local.log"
    with running_stand_in() as stand_in:
        # Only what this system needs: no SKYSERVE_* of the developer or of other tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYSERVE_", "REDIS_"))}
        env.update(
            {
                "SKYSERVE_HOST": "127.0.0.1",
                "SKYSERVE_PORT": str(port),
                "SKYSERVE_INTRA_OP_THREADS": "1",
                "SKYSERVE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
                **{f"SKYSERVE_{k.upper()}": str(v) for k, v in stand_in.worker_env().items()},
                "SKYSERVE_CUTOUT_PIXELS": "96",
            }
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(serving_venv / "bin" / "skyserve-local"),
                    "--redis-port", str(redis_port),
                    "--data-dir", str(data / "var"),
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its Redis and worker are ours to clean up too
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, log, data / "var" / "worker.log")
            yield ServingSystem(url=url, log=log, stand_in=stand_in)
        finally:
            stop(proc, timeout_s=20)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left behind
            except ProcessLookupError:
                pass


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, worker_log: Path) -> None:
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"skyserve-local exited with {proc.returncode}:\n{_tail(log)}")
        try:
            resp = httpx.get(f"{url}/readyz", timeout=5)
            if resp.status_code == 200:
                return
            last = resp.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"Not ready after 180 s: {last}\n{_tail(log)}\nworker:\n{_tail(worker_log)}")


def _tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _fits_bytes() -> bytes:
    """A single-band FITS image of an inclined disk, in float32 fluxes."""
    from astropy.io import fits

    flux = ellipse(96, axis_ratio=0.4, seed=3)[..., 0].astype(np.float32) * 12.5 + 100.0
    buffer = io.BytesIO()
    fits.PrimaryHDU(flux).writeto(buffer)
    return buffer.getvalue()


def _finished(url: str, job_id: str, log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", params={"wait": 10}, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    pytest.fail(f"Job {job_id} did not finish.\n{_tail(log)}")


@pytest.mark.parametrize("module", TRAINER_ONLY)
def test_trainer_packages_are_absent(serving_venv: Path, module: str) -> None:
    probe = _run([str(serving_venv / "bin" / "python"), "-c", f"import {module}"], cwd=REPO)
    assert probe.returncode != 0, f"{module} is importable in the serving install"
    assert "ModuleNotFoundError" in probe.stderr, probe.stderr


@pytest.mark.parametrize(
    ("name", "payload"),
    [("disk.fits", _fits_bytes), ("disk.png", lambda: png_bytes(96, seed=4))],
    ids=["fits", "png"],
)
def test_uploads_are_answered(serving_system: ServingSystem, name: str, payload) -> None:  # type: ignore[no-untyped-def]
    resp = httpx.post(
        f"{serving_system.url}/v1/jobs",
        files={"file": (name, payload(), "application/octet-stream")},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    job = _finished(serving_system.url, resp.json()["id"], serving_system.log)
    assert job["status"] == "succeeded", job.get("error")
    assert job["input"]["format"] == ("FITS" if name.endswith(".fits") else "PNG")
    tasks = job["result"]["tasks"]
    assert set(tasks) == {"inclination", "rejection", "morphology", "object-type"}
    assert 45.0 <= tasks["inclination"]["value"] <= 90.0


def test_target_is_answered(serving_system: ServingSystem) -> None:
    serving_system.stand_in.clear()
    resp = httpx.post(
        f"{serving_system.url}/v1/jobs",
        json={"target": {"name": "M31"}, "tasks": ["inclination", "object-type"]},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    job = _finished(serving_system.url, resp.json()["id"], serving_system.log)
    assert job["status"] == "succeeded", job.get("error")
    assert job["input"]["resolved"]["name"] == "NGC0224"  # M31, as OpenNGC lists it
    assert serving_system.stand_in.cutout_requests(), "the worker never asked for a cutout"
