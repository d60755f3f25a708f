"""POST/GET/DELETE /v1/jobs against a real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import threading

import redis
from fastapi.testclient import TestClient

from services.api.settings import ApiSettings
from shared.jobstore import JobStore
from tests.helpers.images import bomb_png, png_bytes

PROBLEM = "application/problem+json"


def _submit(client: TestClient, data: bytes, **form: str):
    return client.post("/v1/jobs", files={"file": ("g.png", data, "image/png")}, data=form)


def test_submit_answers_202_with_location_and_queues_a_message(
    client: TestClient, settings: ApiSettings
) -> None:
    resp = _submit(client, png_bytes(40), tasks="inclination")
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["tasks"] == ["inclination"]
    assert job["input"]["format"] == "PNG" and job["input"]["width"] == 40
    # The Celery message really sits in the Redis list of the job queue.
    r = redis.Redis.from_url(settings.redis_url)
    assert r.llen(settings.celery_queue) == 1
    # And the payload is stored for the worker.
    store = JobStore(r, prefix=settings.key_prefix, ttl_seconds=60)
    assert store.payload(job["id"]) == png_bytes(40)


def test_tasks_default_to_every_served_task(client: TestClient) -> None:
    resp = _submit(client, png_bytes(32))
    assert resp.status_code == 202
    assert resp.json()["tasks"] == ["inclination"]


def test_get_returns_record_with_retry_after_while_pending(client: TestClient) -> None:
    job = _submit(client, png_bytes(32)).json()
    resp = client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.2})
    assert resp.status_code == 200
    assert resp.json()["status"] == "queued"
    assert resp.headers["retry-after"] == "1"


def test_idempotency_key_returns_the_first_job(client: TestClient, settings: ApiSettings) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    files = {"file": ("g.png", png_bytes(32), "image/png")}
    first = client.post("/v1/jobs", files=files, headers=headers)
    second = client.post("/v1/jobs", files=files, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert redis.Redis.from_url(settings.redis_url).llen(settings.celery_queue) == 1
    other = client.post(
        "/v1/jobs", files={"file": ("g.png", png_bytes(33), "image/png")}, headers=headers
    )
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM


def test_cancel_then_cancel_again_then_unknown(client: TestClient) -> None:
    job = _submit(client, png_bytes(32)).json()
    first = client.delete(f"/v1/jobs/{job['id']}")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    missing = client.delete("/v1/jobs/" + "0" * 32)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


def test_cancelling_a_finished_job_is_a_conflict(client: TestClient, settings: ApiSettings) -> None:
    job = _submit(client, png_bytes(32)).json()
    store = JobStore(redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60)
    from shared.errors import InvalidImage

    store.fail(job["id"], InvalidImage("broken"))
    resp = client.delete(f"/v1/jobs/{job['id']}")
    assert resp.status_code == 409
    assert resp.json()["code"] == "job-not-cancellable"


def test_version_pins(client: TestClient) -> None:
    ok = _submit(client, png_bytes(32), tasks="inclination", versions="inclination=1")
    assert ok.status_code == 202 and ok.json()["versions"] == {"inclination": 1}
    missing = _submit(client, png_bytes(32), tasks="inclination", versions="inclination=9")
    assert missing.status_code == 422 and missing.json()["available"] == [1]
    garbage = _submit(client, png_bytes(32), versions="inclination")
    assert garbage.status_code == 422


def test_unknown_job_id_shapes(client: TestClient) -> None:
    assert client.get("/v1/jobs/" + "a" * 32).status_code == 404
    bad = client.get("/v1/jobs/not-a-job")
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM


def test_bad_uploads_get_problem_documents(client: TestClient, settings: ApiSettings) -> None:
    cases = {
        "not an image": (b"hello, I am text", 415, "unsupported-media-type"),
        "empty": (b"", 422, "invalid-image"),
        "bomb": (bomb_png(), 413, "image-too-large"),
        "too many bytes": (b"\x89PNG" + b"0" * (settings.max_upload_bytes + 10), 413, "image-too-large"),
    }
    for name, (data, status, code) in cases.items():
        resp = _submit(client, data)
        assert resp.status_code == status, (name, resp.text)
        assert resp.headers["content-type"] == PROBLEM, name
        body = resp.json()
        assert body["code"] == code and body["status"] == status and body["detail"], name
    no_file = client.post("/v1/jobs", data={"tasks": "inclination"})
    assert no_file.status_code in (415, 422) and no_file.headers["content-type"] == PROBLEM
    unknown_task = _submit(client, png_bytes(32), tasks="astrology")
    assert unknown_task.status_code == 422
    assert unknown_task.json()["served_tasks"] == ["inclination"]
    # Nothing was queued for any of them.
    assert redis.Redis.from_url(settings.redis_url).llen(settings.celery_queue) == 0


def test_json_body_without_target_is_refused_clearly(client: TestClient) -> None:
    resp = client.post("/v1/jobs", json={"tasks": ["inclination"]})
    assert resp.status_code in (415, 422)
    assert resp.headers["content-type"] == PROBLEM


def _end_later(settings: ApiSettings, job_id: str, after_s: float) -> threading.Thread:
    """A stand-in for the worker: starts and answers the job from another thread."""
    import time

    from shared.schemas import JobResult

    def run() -> None:
        time.sleep(after_s)
        store = JobStore(redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60)
        store.start(job_id)
        store.succeed(job_id, JobResult(tasks={}, models={"inclination": 1}))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wakeups(by: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("skyserve_wait_wakeups_total", {"by": by}) or 0.0


def test_a_waiting_get_is_woken_by_the_jobs_end_notice(settings: ApiSettings) -> None:
    from services.api.app import create_app

    # A fallback re-read far beyond the wait: only the notice can wake the request early.
    slow = settings.model_copy(update={"poll_interval_seconds": 60.0, "max_wait_seconds": 10.0})
    with TestClient(create_app(slow), raise_server_exceptions=False) as client:
        job = _submit(client, png_bytes(40)).json()
        client.portal.call(client.app.state.waiter.listening.wait)  # subscribed
        before = (_wakeups("notice"), _wakeups("timer"))
        worker = _end_later(settings, job["id"], 0.3)
        resp = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10})
        worker.join()
        assert resp.status_code == 200 and resp.json()["status"] == "succeeded"
        assert "retry-after" not in resp.headers
        assert _wakeups("notice") == before[0] + 1 and _wakeups("timer") == before[1]
        assert client.app.state.waiter.waiting() == 0


def test_a_missed_notice_is_covered_by_the_fallback_re_read(settings: ApiSettings) -> None:
    from services.api.app import create_app

    quick = settings.model_copy(update={"poll_interval_seconds": 0.1, "max_wait_seconds": 10.0})
    with TestClient(create_app(quick), raise_server_exceptions=False) as client:
        # No listener at all: as if every notice were lost.
        client.portal.call(client.app.state.waiter._task.cancel)
        job = _submit(client, png_bytes(40)).json()
        before = _wakeups("timer")
        worker = _end_later(settings, job["id"], 0.3)
        resp = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10})
        worker.join()
        assert resp.json()["status"] == "succeeded"
        assert _wakeups("timer") > before


def test_the_status_read_from_a_records_opening_is_the_records_status() -> None:
    from services.api.waiting import status_of
    from shared.jobstore import new_job_id
    from shared.schemas import ImageInput, Job, JobStatus

    for status in JobStatus:
        job = Job(
            id=new_job_id(), status=status, tasks=["inclination"],
            input=ImageInput(size_bytes=3, sha256="x", format="PNG", width=1, height=1),
        )
        assert status_of(job.model_dump_json().encode()) == status
    odd = b'{"status":"running","id":"' + b"a" * 32 + b'","tasks":["x"],"input":{"kind":"image",' \
          b'"size_bytes":1,"sha256":"x","format":"PNG","width":1,"height":1}}'
    assert status_of(odd) == JobStatus.RUNNING  # another field order: parsed instead
