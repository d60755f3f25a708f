"""/v1/tasks, /v1/models, health, OpenAPI and the web page."""

from __future__ import annotations

from fastapi.testclient import TestClient

from shared.errors import all_error_classes


def test_tasks_lists_definitions_with_served_versions(client: TestClient) -> None:
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()}
    assert tasks["inclination"]["versions"] == [1]
    assert tasks["inclination"]["range"] == [45.0, 90.0]


def test_model_cards(client: TestClient) -> None:
    cards = client.get("/v1/models").json()
    assert [(c["task"], c["version"], c["latest"]) for c in cards] == [("inclination", 1, True)]
    assert len(cards[0]["members"]) == 3 and cards[0]["tta"] == ["identity", "rot180"]
    assert client.get("/v1/models/inclination/1").json()["version"] == 1
    assert client.get("/v1/models/inclination/7").status_code == 404
    assert client.get("/v1/models/nothing").status_code == 404
    assert client.get("/v1/models/inclination/1/files/..%2Fmanifest.json").status_code == 404


def test_health_and_readiness_without_worker(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "redis": "reachable"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["redis"]["ok"] and checks["models"]["ok"] and not checks["workers"]["ok"]


def test_metrics_are_exposed(client: TestClient) -> None:
    client.get("/healthz")
    text = client.get("/metrics/").text
    assert "skyserve_http_request_seconds" in text


def test_openapi_documents_every_operation_with_problem_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"submit_job", "get_job", "cancel_job", "list_tasks", "list_models", "readyz"} <= ops
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert "multipart/form-data" in submit["requestBody"]["content"]
    assert {"202", "413", "415", "422"} <= set(submit["responses"])
    assert "Problem" in spec["components"]["schemas"]


def test_error_codes_are_unique_and_render_as_problems() -> None:
    classes = all_error_classes()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        problem = cls("something specific").to_problem("/x")
        assert problem["status"] == cls.status and problem["detail"] == "something specific"
        assert problem["type"].endswith(cls.code)
        assert 400 <= cls.status < 600


def test_web_page_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/js/main.js"' in page.text
