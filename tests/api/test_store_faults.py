"""The API when Redis is away or full, and Idempotency-Key under failure and concurrency.

Real Redis servers (one that is not there, one made full), the real app, and for
concurrency the app served by uvicorn with real parallel HTTP clients.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.queue import JobQueue
from services.api.settings import ApiSettings
from tests.helpers.images import png_bytes
from tests.helpers.live_server import serve
from tests.helpers.processes import start_redis, stop

PROBLEM = "application/problem+json"
CSV = {"content": "id,pgc\n1,2557\n2,5818\n", "headers": {"Content-Type": "text/csv"}}


def _queued(settings: ApiSettings) -> int:
    return redis.Redis.from_url(settings.redis_url).llen(settings.celery_queue)


def _batch_keys(settings: ApiSettings) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url)
    return list(client.scan_iter(match=f"{settings.key_prefix}:batch:*"))


def _assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert int(resp.headers["retry-after"]) > 0
    assert resp.json()["code"] == "service-unavailable"


def test_redis_down_answers_503_with_retry_after(settings: ApiSettings) -> None:
    gone = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(gone), raise_server_exceptions=False) as client:
        job_id = "0" * 32
        for resp in (
            client.post("/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")}),
            client.post("/v1/jobs", json={"target": {"pgc": 2557}}),
            client.get(f"/v1/jobs/{job_id}"),
            client.delete(f"/v1/jobs/{job_id}"),
            client.post("/v1/batches", **CSV),
            client.get(f"/v1/batches/{job_id}"),
            client.delete(f"/v1/batches/{job_id}"),
        ):
            _assert_unavailable(resp)
        assert "cannot be reached" in client.get(f"/v1/jobs/{job_id}").json()["detail"]

        ready = client.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
        assert not ready.json()["checks"]["redis"]["ok"]
        # Liveness stays green (restarting the API would not bring Redis back) but says so.
        assert client.get("/healthz").json() == {"status": "ok", "redis": "unreachable"}


def test_redis_full_answers_503_and_the_api_recovers(settings: ApiSettings, tmp_path: Path) -> None:
    url, proc = start_redis(tmp_path / "redis")
    full = redis.Redis.from_url(url)
    try:
        own = settings.model_copy(update={"redis_url": url})
        with TestClient(create_app(own), raise_server_exceptions=False) as client:
            used = int(full.info("memory")["used_memory"])
            full.config_set("maxmemory", used + 1024)  # noeviction: writes now fail
            upload = {"file": ("g.png", png_bytes(32), "image/png")}
            resp = client.post("/v1/jobs", files=upload)
            _assert_unavailable(resp)
            assert "full" in resp.json()["detail"]

            full.config_set("maxmemory", 0)
            assert client.post("/v1/jobs", files=upload).status_code == 202
    finally:
        full.close()
        stop(proc)


def test_a_refused_batch_does_not_use_up_its_idempotency_key(
    client: TestClient, settings: ApiSettings
) -> None:
    key = {"Idempotency-Key": "retry-me"}
    refused = client.post(
        "/v1/batches", content="id,colour\n1,red\n", headers={"Content-Type": "text/csv", **key}
    )
    assert refused.status_code == 422
    assert _batch_keys(settings) == []  # nothing of it stays in Redis

    fixed = client.post("/v1/batches", content=CSV["content"], headers={**CSV["headers"], **key})
    assert fixed.status_code == 202, fixed.text
    again = client.post("/v1/batches", content=CSV["content"], headers={**CSV["headers"], **key})
    assert again.status_code == 200 and again.json()["id"] == fixed.json()["id"]
    assert _queued(settings) == 1


def test_a_batch_past_the_storage_bound_is_refused_and_leaves_nothing(
    settings: ApiSettings,
) -> None:
    small = settings.model_copy(update={"max_batch_stored_bytes": 50_000})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(8):  # compress well, unpack to 8 x ~20 kB
            zf.writestr(f"g{k}.png", png_bytes(64, seed=k) + bytes(20_000))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        resp = client.post(
            "/v1/batches", files={"file": ("set.zip", archive.getvalue(), "application/zip")}
        )
        assert resp.status_code == 413, resp.text
        assert resp.headers["content-type"] == PROBLEM
        assert resp.json()["code"] == "batch-too-large" and "50,000" in resp.json()["detail"]
        assert _batch_keys(settings) == [] and _queued(settings) == 0

        fits = client.post("/v1/batches", **CSV)
        assert fits.status_code == 202


@pytest.fixture
def live_url(settings: ApiSettings) -> Iterator[str]:
    with serve(create_app(settings)) as live:
        yield live.url


def _at_once(count: int, send) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    """``count`` real HTTP requests released together from as many threads."""
    barrier = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            return send(http)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_identical_job_requests_make_one_job(
    live_url: str, settings: ApiSettings
) -> None:
    image = png_bytes(40)
    answers = _at_once(
        8,
        lambda http: http.post(
            f"{live_url}/v1/jobs",
            files={"file": ("g.png", image, "image/png")},
            headers={"Idempotency-Key": "same-job"},
        ),
    )
    assert sorted(r.status_code for r in answers) == [200] * 7 + [202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert _queued(settings) == 1
    client = redis.Redis.from_url(settings.redis_url)
    assert len(list(client.scan_iter(match=f"{settings.key_prefix}:job:*"))) == 1


def test_concurrent_identical_batch_requests_make_one_batch(
    live_url: str, settings: ApiSettings
) -> None:
    rows = "id,pgc\n" + "".join(f"g{k},{1000 + k}\n" for k in range(300))
    answers = _at_once(
        6,
        lambda http: http.post(
            f"{live_url}/v1/batches",
            content=rows,
            headers={"Content-Type": "text/csv", "Idempotency-Key": "same-batch"},
        ),
    )
    assert sorted(r.status_code for r in answers) == [200] * 5 + [202]
    [batch_id] = {r.json()["id"] for r in answers}
    chunks = answers[0].json()["chunks"]
    assert _queued(settings) == chunks  # one batch's chunks, not six
    assert {k.decode().split(":")[2] for k in _batch_keys(settings)} == {batch_id}


def test_a_request_whose_queue_was_unreachable_leaves_its_key_free(settings: ApiSettings) -> None:
    # Redis answers, but the broker the queue talks to does not (a real client of a real
    # address where nothing listens): the job is failed, the batch cancelled, keys freed.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        working = client.app.state.queue
        client.app.state.queue = JobQueue(
            settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        )
        upload = {"file": ("g.png", png_bytes(32), "image/png")}
        job_key, batch_key = {"Idempotency-Key": "job-k"}, {"Idempotency-Key": "batch-k"}
        _assert_unavailable(client.post("/v1/jobs", files=upload, headers=job_key))
        _assert_unavailable(
            client.post(
                "/v1/batches", content=CSV["content"], headers={**CSV["headers"], **batch_key}
            )
        )

        client.app.state.queue.close()
        client.app.state.queue = working
        job = client.post("/v1/jobs", files=upload, headers=job_key)
        batch = client.post(
            "/v1/batches", content=CSV["content"], headers={**CSV["headers"], **batch_key}
        )
        assert (job.status_code, batch.status_code) == (202, 202)
        assert job.json()["status"] == "queued" and batch.json()["status"] == "queued"
        assert _queued(settings) == 1 + batch.json()["chunks"]
