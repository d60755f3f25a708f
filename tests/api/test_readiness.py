"""/readyz from the workers' heartbeats (written as the worker writes them) and the registry."""

from __future__ import annotations

import time

import redis
from fastapi.testclient import TestClient

from services.api.settings import ApiSettings
from shared.jobstore import JobStore


def beat(settings: ApiSettings, name: str, **record: object) -> None:
    store = JobStore(
        redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60
    )
    store.heartbeat(
        name, {"hostname": name, "pid": 1, "time": time.time(), **record}, ttl_seconds=30
    )


def test_a_worker_still_loading_its_models_is_not_ready(
    client: TestClient, settings: ApiSettings
) -> None:
    beat(settings, "w1/1", ready=False, served={}, refused={})
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
    workers = resp.json()["checks"]["workers"]
    assert not workers["ok"] and workers["detail"] == "no live worker, 1 still loading models"
    assert resp.json()["live_workers"] == 0

    beat(settings, "w1/1", ready=True, served={"inclination": 1}, refused={})
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"]["models"]["detail"] == "inclination v1"
    assert resp.json()["live_workers"] == 1


def test_refused_versions_show_while_the_previous_one_serves(
    client: TestClient, settings: ApiSettings
) -> None:
    refused = {"inclination": {"2": "m0.onnx does not match its sha256."}}
    beat(settings, "w1/1", ready=True, served={"inclination": 1}, refused=refused)
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json()["checks"]["models"]["detail"] == (
        "inclination v1 (refused v2: m0.onnx does not match its sha256.)"
    )


def test_a_published_task_no_worker_can_serve_is_not_ready(
    client: TestClient, settings: ApiSettings
) -> None:
    refused = {"inclination": {"1": "its model file does not load (InvalidProtobuf)"}}
    beat(settings, "w1/1", ready=True, served={}, refused=refused)
    resp = client.get("/readyz")
    assert resp.status_code == 503
    models = resp.json()["checks"]["models"]
    assert not models["ok"] and models["detail"].startswith("inclination not served (refused v1")


def test_an_unknown_path_is_a_problem_with_a_code(client: TestClient) -> None:
    # docs/api.md promises a code on every problem, Starlette's own 404/405 included.
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not-found"
    wrong = client.put("/v1/tasks")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method-not-allowed"
