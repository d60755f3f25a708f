"""The spine end to end: upload → API → Redis → Celery worker → ONNX ensemble → answer."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.registry import RegistryReader
from tests.helpers.images import truncated_png
from tests.helpers.requirements import require_module
from tests.integration.conftest import DEFAULT_MODELS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
galaxies = require_module("services.trainer.data.galaxies", extra="trainer")


def _answer(stack: Stack, data: bytes, **form: str) -> dict:
    resp = stack.client.post("/v1/jobs", files={"file": ("galaxy.png", data, "image/png")}, data=form)
    assert resp.status_code == 202, resp.text
    location = resp.headers["location"]
    for _ in range(60):
        job = stack.client.get(location, params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job never finished: {job}")


@pytest.mark.parametrize(("inclination", "seed"), [(52.0, 11), (67.0, 12), (83.0, 13)])
def test_a_galsim_galaxy_comes_back_within_5_degrees(stack: Stack, inclination: float, seed: int) -> None:
    png = galaxies.render_galaxy_png(inclination, seed=seed)
    job = _answer(stack, png, tasks="inclination")
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]["tasks"]["inclination"]
    assert abs(result["value"] - inclination) < 5.0, result
    manifest = RegistryReader(DEFAULT_MODELS).manifest("inclination")
    # Every ensemble member answered, each from both test-time rotations, and the summary is there.
    assert [m["member"] for m in result["members"]] == [m.name for m in manifest.members]
    assert all(len(m["tta_values"]) == len(manifest.tta) for m in result["members"])
    # The summary, with the spread of every member x rotation and its calibrated 1σ error.
    assert set(result["summary"]) == {"mean", "median", "stdev", "min", "max", "spread", "error"}
    assert result["summary"]["min"] <= result["value"] <= result["summary"]["max"]
    assert result["summary"]["error"] >= manifest.calibration.error_floor > 0
    # A clean, inclined disk is judged applicable from object type, rejection and morphology.
    assert result["applicable"] is True, result["applicable_reason"]
    assert {"rejection:face_on", "morphology:smooth-or-featured:smooth"} <= set(result["evidence"])
    assert result["model_version"] == manifest.version == job["result"]["models"]["inclination"]
    assert job["attempts"] == 1 and job["finished_at"] >= job["started_at"]


def test_readiness_sees_the_worker(stack: Stack) -> None:
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["workers"]["ok"]


def test_a_truncated_upload_ends_failed_with_a_reason(stack: Stack) -> None:
    job = _answer(stack, truncated_png(96))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid-image"
    assert "truncated" in job["error"]["detail"]


def test_an_answered_upload_keeps_the_image_the_models_saw(stack: Stack) -> None:
    # The upload leaves Redis when its job ends; the worker keeps the padded square
    # the page shows, so the image outlives the payload.
    png = galaxies.render_galaxy_png(70.0, seed=21)
    job = _answer(stack, png, tasks="inclination")
    assert job["status"] == "succeeded", job["error"]
    store = stack.client.app.state.store
    assert store.redis.exists(store.blob_key(job["id"])) == 0
    seen = stack.client.get(f"/v1/jobs/{job['id']}/image")
    assert seen.status_code == 200, seen.text
    assert seen.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(seen.content))
    assert image.size == (256, 256) and image.mode == "RGB"
