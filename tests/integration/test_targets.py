"""Target jobs end to end: API → Redis → a real worker → a real HTTP cutout service → ONNX.

A local HTTP server started by the test stands in for the survey cutout service;
the worker reaches it through ``SKYSERVE_CUTOUT_PROVIDER=http``, a URL template and
the host allowlist, exactly as it would reach SDSS or the Legacy Survey.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.worker.inference import predict
from services.worker.sessions import SessionCache
from services.worker.orientation import orient_cutout, padded_fov_arcmin
from shared.preprocessing import preprocess
from shared.registry import RegistryReader
from shared.schemas import TaskResult
from tests.helpers.cutout_server import cutout_png
from tests.helpers.images import png_bytes
from tests.helpers.system import System, running_system

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEM = "application/problem+json"
PIXELS = 64  # SKYSERVE_CUTOUT_PIXELS of the test worker


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("targets")) as started:
        yield started


@pytest.fixture
def api(system: System) -> Iterator[TestClient]:
    with system.api() as client:
        yield client


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _answer_for(registry: Path, png: bytes) -> TaskResult:
    """The registry's inclination answer for an image, computed here without any queue."""
    cache = SessionCache(
        RegistryReader(registry), providers=["CPUExecutionProvider"], intra_op_threads=1
    )
    model = cache.get("inclination")
    image = preprocess(png, model.manifest.input)[np.newaxis]
    (result,) = predict(cache.task_definitions["inclination"], model, image, max_batch_size=32)
    return result


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ({"pgc": 2557}, "NGC0224"),  # PGC number
        ({"name": "NGC 4565"}, "NGC4565"),  # NGC
        ({"name": "M104"}, "NGC4594"),  # Messier
        ({"name": "whirlpool  galaxy"}, "NGC5194"),  # common name, any spacing and case
        ({"ra": "12h39m59.43s", "dec": "-11d37m23.0s"}, "NGC4594"),  # a catalogued position
        ({"ra": 123.0, "dec": -5.0, "fov_arcmin": 3}, None),  # empty sky: no PA, no rotation
    ],
)
def test_a_target_is_fetched_oriented_kept_and_answered(
    system: System, api: TestClient, target: dict, name: str | None
) -> None:
    seen_before = len(system.stand_in.cutout_requests())

    resp = api.post("/v1/jobs", json={"target": target, "tasks": ["inclination"]})
    assert resp.status_code == 202, resp.text
    job = system.wait_job(api, resp.json()["id"])

    assert job["status"] == "succeeded", job["error"]
    given = job["input"]
    assert (given["resolved"] or {}).get("name") == name
    # The cutout service was asked once (no cache here), for the resolved position and a
    # field padded by √2 when the image will be turned by the position angle.
    asked = [
        r
        for r in system.stand_in.cutout_requests()[seen_before:]
        if abs(float(r.query["ra"]) - given["ra_deg"]) < 1e-6
        and abs(float(r.query["dec"]) - given["dec_deg"]) < 1e-6
    ]
    assert len(asked) == 1, system.stand_in.cutout_requests()[seen_before:]
    fetched_fov = (
        padded_fov_arcmin(given["fov_arcmin"])
        if given["pa_deg"] is not None
        else given["fov_arcmin"]
    )
    assert float(asked[0].query["scale"]) == pytest.approx(fetched_fov * 60 / PIXELS, rel=1e-5)
    assert asked[0].query["size"] == str(PIXELS)

    # The evaluated image is the served cutout turned by the PA and cropped to the field…
    image = api.get(f"/v1/jobs/{job['id']}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    expected = orient_cutout(
        cutout_png(PIXELS), given["pa_deg"], given["fov_arcmin"], image_fov_arcmin=fetched_fov
    )
    assert np.array_equal(_pixels(image.content), _pixels(expected))
    # …and it is what the models answered for.
    answer = job["result"]["tasks"]["inclination"]
    assert answer["value"] == pytest.approx(_answer_for(system.registry, image.content).value)
    assert {"fetch_cutout", "preprocess", "infer:inclination"} <= set(job["result"]["timings_ms"])


def test_an_unknown_name_is_404_with_suggestions_and_fetches_nothing(
    system: System, api: TestClient
) -> None:
    seen_before = len(system.stand_in.requests)

    resp = api.post("/v1/jobs", json={"target": {"name": "Whirlpool Galxy"}})

    assert resp.status_code == 404 and resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == "unknown-target"
    assert "Whirlpool Galaxy" in resp.json()["suggestions"]
    assert len(system.stand_in.requests) == seen_before


def test_a_cutout_service_slower_than_the_timeout_fails_the_job_readably(
    system: System, api: TestClient
) -> None:
    system.stand_in.slow_ra.add("150.0")  # this position answers after 3 s; the timeout is 1 s
    system.stand_in.slow_s = 3.0
    try:
        resp = api.post("/v1/jobs", json={"target": {"ra": 150.0, "dec": 2.0}})
        assert resp.status_code == 202, resp.text
        job = system.wait_job(api, resp.json()["id"])
    finally:
        system.stand_in.slow_ra.discard("150.0")

    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == "cutout-unavailable" and error["status"] == 424
    assert "no answer within 1 s" in error["detail"] and "tried 2 times" in error["detail"]
    # Which setting an operator changes, and the way around it, in the job's own reason.
    assert "SKYSERVE_CUTOUT_TIMEOUT_SECONDS" in error["detail"]
    assert "uploading an image" in error["detail"]
    assert len([r for r in system.stand_in.cutout_requests() if r.query["ra"] == "150.0"]) == 2
    assert api.get(f"/v1/jobs/{job['id']}/image").status_code == 409  # the job exists; it has no image


def test_a_cutout_template_off_the_allowlist_is_refused(redis_url: str, tmp_path: Path) -> None:
    # The template points at the stand-in, but the allowlist names another port only.
    with (
        running_system(
            redis_url, tmp_path, worker={"cutout_allowed_hosts": "127.0.0.1:9"}
        ) as system,
        system.api() as api,
    ):
        resp = api.post("/v1/jobs", json={"target": {"name": "M33"}})
        job = system.wait_job(api, resp.json()["id"])
        upload = api.post("/v1/jobs", files={"file": ("g.png", png_bytes(), "image/png")})
        uploaded = system.wait_job(api, upload.json()["id"])

        assert job["status"] == "failed"
        assert job["error"]["code"] == "cutout-unavailable"
        assert "not in the allowlist" in job["error"]["detail"]
        assert "SKYSERVE_CUTOUT_ALLOWED_HOSTS" in job["error"]["detail"]
        assert "uploading an image" in job["error"]["detail"]
        assert system.stand_in.requests == []  # nothing was sent to a host not allowed
        # Uploads do not need the cutout service: the worker still answers them.
        assert uploaded["status"] == "succeeded", uploaded["error"]
