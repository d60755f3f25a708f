"""``target`` is a discriminated union: PGC | name | position, nothing else and no mixture."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    "target",
    [
        {"coordinates": "00h42m44.3s +41d16m09s"},
        {"coordinates": "00:42:44.3 +41:16:09", "fov_arcmin": 5},
        {"coordinates": "10.6848 41.2689"},
        {"pgc": "pgc 2557"},
        {"pgc": "LEDA 2557"},
    ],
)
def test_more_ways_to_name_andromeda(client: TestClient, target: dict) -> None:
    resp = client.post("/v1/jobs", json={"target": target, "tasks": ["inclination"]})
    assert resp.status_code == 202, resp.text
    assert resp.json()["input"]["resolved"]["name"] == "NGC0224"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"target": {"name": "M33", "ra": 1}}, "mixes name and coordinates"),
        ({"target": {"pgc": 2557, "name": "M31"}}, "mixes pgc and name"),
        ({"target": {"coordinates": "00h42m44.3s +41d16m09s", "ra": 1, "dec": 2}}, "not both"),
        ({"target": {"pgc": "²"}}, "is not a PGC number"),
        ({"target": {"pgc": True}}, "whole number"),
        ({"target": {"pgc": 2.5}}, "whole number"),
        ({"target": {"pgc": 10**40}}, "less than or equal to 999999999"),
        ({"target": {"name": "M31", "colour": "red"}}, "colour"),
        ({"target": {"galaxy": "M31"}}, 'A target is one of {"pgc": 2557}'),
        ({"target": "M31"}, 'A target is one of {"pgc": 2557}'),
        ({"target": {"ra": 10}}, "ra and dec go together"),
        ({"target": {"coordinates": "somewhere nice"}}, "coordinate"),
        ({"target": {"name": "\u0000"}}, "target.name"),
        ({"target": {"name": "M31", "fov_arcmin": 0}}, "fov_arcmin"),
        ({"target": {"ra": 200, "dec": 95}}, "give −90 ≤ Dec ≤ +90 degrees."),
    ],
)
def test_junk_and_mixtures_are_clear_422s(client: TestClient, body: dict, says: str) -> None:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == PROBLEM
    problem = resp.json()
    assert says in problem["detail"], problem["detail"]
    assert ".." not in problem["detail"], problem["detail"]  # one full stop, not two
    assert problem["errors"] and all(e["loc"][0] == "target" for e in problem["errors"])


def test_a_five_thousand_digit_pgc_is_a_422_not_a_crash(client: TestClient) -> None:
    body = '{"target": {"pgc": ' + "9" * 5000 + "}}"
    resp = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == PROBLEM and resp.json()["detail"]


def test_openapi_documents_the_three_kinds(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("PgcTarget", "NameTarget", "PositionTarget"):
        assert name in schemas
        assert schemas[name].get("additionalProperties") is False
    assert schemas["PositionTarget"]["properties"]["coordinates"]
