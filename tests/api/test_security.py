"""API keys, scopes, owners and limits against the real API and a real Redis (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.apikeys import KeyStore
from tests.helpers.images import png_bytes

PROBLEM = "application/problem+json"


@pytest.fixture
def keyed(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(update={"auth_mode": "keys"})


@pytest.fixture
def keys(keyed: ApiSettings) -> KeyStore:
    return KeyStore(redis.Redis.from_url(keyed.redis_url), prefix=keyed.key_prefix)


@pytest.fixture
def api(keyed: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(api: TestClient, token: str | None, **headers: str):
    auth = bearer(token) if token else {}
    return api.post("/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")},
                    headers={**auth, **headers})


def test_keys_are_stored_hashed(keys: KeyStore, keyed: ApiSettings) -> None:
    token, record = keys.create(["submit", "read"], note="pipeline")
    assert token.startswith(f"sk_{record.id}_") and len(token) > 50
    client = redis.Redis.from_url(keyed.redis_url)
    stored = b"".join(client.get(k) or b"" for k in client.scan_iter(match=f"{keyed.key_prefix}*"))
    secret = token.split("_", 2)[2]
    assert secret.encode() not in stored and token.encode() not in stored
    assert keys.verify(token) == record
    assert keys.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.verify("sk_000000000000_" + "a" * 43) is None and keys.verify("nonsense") is None
    assert [k.id for k in keys.list()] == [record.id]
    assert keys.revoke(record.id) and keys.verify(token) is None and not keys.revoke(record.id)
    with pytest.raises(ValueError, match="Scopes"):
        keys.create(["root"])


def test_without_a_key_jobs_are_refused_with_401(api: TestClient) -> None:
    resp = submit(api, None)
    assert resp.status_code == 401 and resp.headers["content-type"] == PROBLEM
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert "skyserve-admin keys create" in resp.json()["detail"]
    assert submit(api, "sk_000000000000_" + "x" * 43).status_code == 401
    assert api.get("/v1/jobs/" + "a" * 32).status_code == 401
    assert api.post("/v1/batches", content="id,pgc\na,1\n", headers={"Content-Type": "text/csv"}).status_code == 401
    # Public: the catalogue, health and the docs.
    for path in ("/healthz", "/v1/tasks", "/v1/models", "/openapi.json", "/"):
        assert api.get(path).status_code == 200, path


def test_scopes(api: TestClient, keys: KeyStore) -> None:
    reader, _ = keys.create(["read"])
    submitter, _ = keys.create(["submit"])
    resp = submit(api, reader)
    assert resp.status_code == 403 and resp.json()["needed_scope"] == "submit"
    job = submit(api, submitter).json()
    # A submit-only key may cancel its job but not read it.
    assert api.get(f"/v1/jobs/{job['id']}", headers=bearer(submitter)).status_code == 403
    assert api.delete(f"/v1/jobs/{job['id']}", headers=bearer(submitter)).status_code == 200


def test_a_key_sees_and_cancels_only_its_owners_jobs(api: TestClient, keys: KeyStore) -> None:
    alice, _ = keys.create(["submit", "read"], owner="alice")
    alice_dashboard, _ = keys.create(["read"], owner="alice")
    bob, _ = keys.create(["submit", "read"], owner="bob")
    admin, _ = keys.create(["admin"])
    job = submit(api, alice).json()
    batch = api.post("/v1/batches", content="id,pgc\na,2557\n",
                     headers={"Content-Type": "text/csv", **bearer(alice)}).json()
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/image",
                 f"/v1/batches/{batch['id']}", f"/v1/batches/{batch['id']}/results"):
        other = api.get(path, headers=bearer(bob))
        assert other.status_code == 404 and other.headers["content-type"] == PROBLEM, path
        assert "no job" in other.json()["detail"] or "no batch" in other.json()["detail"]
    assert api.delete(f"/v1/jobs/{job['id']}", headers=bearer(bob)).status_code == 404
    assert api.delete(f"/v1/batches/{batch['id']}", headers=bearer(bob)).status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}", headers=bearer(alice_dashboard)).status_code == 200
    assert api.get(f"/v1/jobs/{job['id']}", headers=bearer(admin)).status_code == 200
    assert api.get(f"/v1/batches/{batch['id']}", headers=bearer(admin)).status_code == 200
    assert api.delete(f"/v1/jobs/{job['id']}", headers=bearer(alice)).json()["status"] == "cancelled"
    # Idempotency keys are per owner: bob's same key makes bob's own job.
    first = submit(api, alice, **{"Idempotency-Key": "k1"}).json()
    theirs = submit(api, bob, **{"Idempotency-Key": "k1"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first["id"]


def test_operator_surfaces_need_admin(api: TestClient, keys: KeyStore) -> None:
    user, _ = keys.create(["submit", "read"])
    admin, _ = keys.create(["admin"])
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=bearer(user)).status_code == 403
    metrics = api.get("/metrics", headers=bearer(admin))
    assert metrics.status_code == 200 and "skyserve_http_request_seconds" in metrics.text
    onnx = next(iter(api.get("/v1/models/inclination/1").json()["members"]))["name"]
    path = f"/v1/models/inclination/1/files/{onnx}.onnx"
    assert api.get(path).status_code == 403
    assert api.get(path, headers=bearer(user)).status_code == 403
    assert api.get(path, headers=bearer(admin)).status_code in (200, 404)  # 404: no such file name
    # readyz answers everyone, but only an admin sees the workers' details.
    assert api.get("/readyz").json()["workers"] == []


def test_rate_limit_answers_429_with_retry_after(keyed: ApiSettings, keys: KeyStore) -> None:
    token, _ = keys.create(["read"])
    with TestClient(create_app(keyed.model_copy(update={"rate_limit_per_minute": 5})),
                    raise_server_exceptions=False) as api:
        codes = [api.get("/v1/jobs/" + "a" * 32, headers=bearer(token)).status_code for _ in range(7)]
        assert codes[:5] == [404] * 5 and codes[5:] == [429, 429]
        limited = api.get("/v1/jobs/" + "a" * 32, headers=bearer(token))
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["code"] == "rate-limited"
        other, _ = keys.create(["read"])  # per key: another key is not limited
        assert api.get("/v1/jobs/" + "a" * 32, headers=bearer(other)).status_code == 404


def test_unfinished_jobs_per_key_are_capped(keyed: ApiSettings, keys: KeyStore) -> None:
    token, _ = keys.create(["submit", "read"])
    with TestClient(create_app(keyed.model_copy(update={"max_active_jobs_per_key": 2})),
                    raise_server_exceptions=False) as api:
        jobs = [submit(api, token) for _ in range(2)]
        assert [j.status_code for j in jobs] == [202, 202]
        third = submit(api, token)
        assert third.status_code == 429 and third.headers["retry-after"] == "5"
        assert third.json()["code"] == "too-many-jobs"
        batch = api.post("/v1/batches", content="id,pgc\na,1\n",
                         headers={"Content-Type": "text/csv", **bearer(token)})
        assert batch.status_code == 429
        api.delete(f"/v1/jobs/{jobs[0].json()['id']}", headers=bearer(token))  # one finishes
        assert submit(api, token).status_code == 202


def test_open_mode_needs_no_key_and_sees_everything(client: TestClient) -> None:
    job = client.post("/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")})
    assert job.status_code == 202
    assert client.get(f"/v1/jobs/{job.json()['id']}").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_the_client_sends_skyserve_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.client.calls import http_options

    monkeypatch.setenv("SKYSERVE_API_KEY", "sk_0123456789ab_secret-from-env")
    _, options = http_options("http://x", api_key=None, timeout=None)
    assert options["headers"]["Authorization"] == "Bearer sk_0123456789ab_secret-from-env"


def test_openapi_declares_the_bearer_key_only_in_keys_mode(api: TestClient, client: TestClient) -> None:
    keyed_schema = api.get("/openapi.json").json()
    assert keyed_schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert keyed_schema["paths"]["/v1/jobs"]["post"]["security"] == [{"apiKey": []}]
    # The catalogue stays public, so it asks for no key.
    assert "security" not in keyed_schema["paths"]["/v1/tasks"]["get"]
    open_schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert "security" not in open_schema["paths"]["/v1/jobs"]["post"]
