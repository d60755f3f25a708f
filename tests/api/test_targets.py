"""Target jobs: catalogued objects and sky positions resolved by the API (OpenNGC, offline)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ({"pgc": 2557}, "NGC0224"),
        ({"pgc": "PGC002557"}, "NGC0224"),
        ({"name": "M33"}, "NGC0598"),
        ({"name": "andromeda   galaxy"}, "NGC0224"),
        ({"ra": "00h42m44.3s", "dec": "+41d16m09s"}, "NGC0224"),
        ({"ra": 10.6848, "dec": 41.2689, "fov_arcmin": 5}, "NGC0224"),
    ],
)
def test_targets_resolve_and_queue(client: TestClient, target: dict, name: str) -> None:
    resp = client.post("/v1/jobs", json={"target": target, "tasks": ["inclination"]})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["input"]["kind"] == "target"
    assert job["input"]["resolved"]["name"] == name
    assert job["input"]["pa_deg"] is not None
    if "fov_arcmin" in target:
        assert job["input"]["fov_arcmin"] == 5
    else:
        assert job["input"]["fov_arcmin"] == pytest.approx(1.5 * job["input"]["resolved"]["majax_arcmin"])


def test_position_without_a_catalogued_object_still_runs(client: TestClient) -> None:
    resp = client.post("/v1/jobs", json={"target": {"ra": 123.0, "dec": -5.0}})
    assert resp.status_code == 202
    assert resp.json()["input"]["resolved"] is None and resp.json()["input"]["fov_arcmin"] == 2.0


def test_unknown_name_is_404_with_suggestions(client: TestClient) -> None:
    resp = client.post("/v1/jobs", json={"target": {"name": "Andromeda Galxy"}})
    assert resp.status_code == 404 and resp.headers["content-type"] == PROBLEM
    assert "Andromeda Galaxy" in resp.json()["suggestions"]


@pytest.mark.parametrize(
    "body",
    [
        {"target": {"ra": 400, "dec": 0}},
        {"target": {"ra": "nonsense", "dec": "1"}},
        {"target": {}},
        {"target": {"name": "M31", "fov_arcmin": "wide"}},
        {"tasks": ["inclination"]},
    ],
)
def test_bad_targets_are_422(client: TestClient, body: dict) -> None:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == PROBLEM and resp.json()["detail"]


def test_evaluated_image_is_409_until_a_worker_keeps_one(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"target": {"name": "M33"}}).json()
    resp = client.get(f"/v1/jobs/{job['id']}/image")
    # The job exists (so not 404); its image does not yet: a conflict with its state.
    assert resp.status_code == 409 and resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == "no-image-yet"
    assert client.get("/v1/jobs/" + "0" * 32 + "/image").status_code == 404
