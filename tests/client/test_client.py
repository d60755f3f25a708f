"""SkyserveClient and AsyncSkyserveClient against the real API over real HTTP (real Redis)."""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.api.settings import ApiSettings
from services.client import (
    AsyncSkyserveClient,
    SkyserveAPIError,
    SkyserveClient,
    SkyserveConnectionError,
    SkyserveTimeoutError,
)
from services.client.calls import Deadline, retry_after, target_call
from shared.jobstore import JobStore
from shared.schemas import Job, JobStatus
from tests.client.stand_in import STDEV, VALUE, StandInWorker, job_result
from tests.helpers.images import png_bytes
from tests.helpers.live_server import LiveServer, unused_url

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
def sky(live_api: LiveServer) -> Iterator[SkyserveClient]:
    with SkyserveClient(live_api.url) as client:
        yield client


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "galaxy.png"
    path.write_bytes(png_bytes(40))
    return path


def _store(settings: ApiSettings) -> JobStore:
    return JobStore(
        redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60
    )


# -- single jobs -----------------------------------------------------------------------------
def test_submit_image_from_a_path_and_from_bytes(sky: SkyserveClient, image: Path) -> None:
    from_path = sky.submit_image(image, tasks=["inclination"])
    from_bytes = sky.submit_image(png_bytes(33))
    assert isinstance(from_path, Job) and from_path.status == JobStatus.QUEUED
    assert from_path.tasks == ["inclination"]
    assert from_path.input.filename == "galaxy.png" and from_path.input.width == 40
    assert from_bytes.input.width == 33 and from_bytes.tasks == ["inclination"]
    assert sky.get_job(from_path.id).id == from_path.id


def test_get_job_with_wait_long_polls_a_queued_job(sky: SkyserveClient, image: Path) -> None:
    job = sky.submit_image(image)
    start = time.monotonic()
    again = sky.get_job(job.id, wait=0.4)
    assert again.status == JobStatus.QUEUED
    assert time.monotonic() - start >= 0.35  # the server held the request


def test_wait_job_returns_once_the_store_finishes_it(
    sky: SkyserveClient, image: Path, settings: ApiSettings
) -> None:
    job = sky.submit_image(image, tasks="inclination")
    store = _store(settings)
    timer = threading.Timer(0.5, lambda: store.succeed(job.id, job_result(job)))
    timer.start()
    try:
        done = sky.wait_job(job.id, timeout=20, poll=0.1)
    finally:
        timer.join()
    assert done.status == JobStatus.SUCCEEDED
    answer = done.result.tasks["inclination"]
    assert answer.value == VALUE and answer.summary["stdev"] == STDEV
    assert answer.model_version == 1


def test_wait_job_returns_a_failed_job_instead_of_raising(
    sky: SkyserveClient, image: Path, worker: StandInWorker
) -> None:
    worker.fail_jobs = True
    job = sky.wait_job(sky.submit_image(image).id, timeout=20)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "invalid-image"


def test_wait_job_times_out_with_the_last_record(sky: SkyserveClient, image: Path) -> None:
    job = sky.submit_image(image)
    start = time.monotonic()
    with pytest.raises(SkyserveTimeoutError, match="still queued") as caught:
        sky.wait_job(job.id, timeout=0.6, poll=0.1)
    elapsed = time.monotonic() - start
    assert 0.55 <= elapsed < 3.0
    assert isinstance(caught.value.last, Job) and caught.value.last.id == job.id


def test_cancel_then_cancel_again_then_a_finished_job_is_refused(
    sky: SkyserveClient, image: Path, settings: ApiSettings
) -> None:
    job = sky.submit_image(image)
    assert sky.cancel_job(job.id).status == JobStatus.CANCELLED
    assert sky.cancel_job(job.id).status == JobStatus.CANCELLED
    finished = sky.submit_image(image)
    _store(settings).succeed(finished.id, job_result(finished))
    with pytest.raises(SkyserveAPIError) as caught:
        sky.cancel_job(finished.id)
    assert caught.value.status == 409
    assert caught.value.problem["status_now"] == "succeeded"


def test_unknown_task_is_a_422_problem_listing_the_served_tasks(
    sky: SkyserveClient, image: Path
) -> None:
    with pytest.raises(SkyserveAPIError) as caught:
        sky.submit_image(image, tasks=["morphology-of-cats"])
    err = caught.value
    assert err.status == 422 and err.code == "unknown-task"
    assert err.problem["served_tasks"] == ["inclination"]
    assert str(err).startswith(f"{err.title} (422) — ")
    assert "morphology-of-cats" in str(err)


def test_bytes_that_are_not_an_image_are_refused(sky: SkyserveClient) -> None:
    with pytest.raises(SkyserveAPIError) as caught:
        sky.submit_image(b"this is not an image at all")
    assert caught.value.status == 415
    assert "PNG" in caught.value.detail


def test_unknown_job_is_a_404(sky: SkyserveClient) -> None:
    with pytest.raises(SkyserveAPIError) as caught:
        sky.get_job("0" * 32)
    assert caught.value.status == 404 and caught.value.problem["title"]


def test_idempotency_key_returns_the_first_job(sky: SkyserveClient, image: Path) -> None:
    first = sky.submit_image(image, idempotency_key="retry-me")
    second = sky.submit_image(image, idempotency_key="retry-me")
    assert second.id == first.id
    assert sky.submit_image(image).id != first.id


def test_missing_image_file_is_a_file_not_found_error(sky: SkyserveClient, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no image file"):
        sky.submit_image(tmp_path / "missing.png")


# -- catalogue, health, connection ---------------------------------------------------------------
def test_tasks_and_models_list_the_tiny_registry(sky: SkyserveClient) -> None:
    tasks = {t["name"]: t for t in sky.tasks()}
    assert tasks["inclination"]["versions"] == [1] and tasks["inclination"]["latest"] == 1
    models = sky.models()
    assert [(m["task"], m["version"]) for m in models] == [("inclination", 1)]
    assert len(models[0]["members"]) == 3


def test_ready_returns_the_report_when_no_worker_is_alive(sky: SkyserveClient) -> None:
    report = sky.ready()  # a 503 carrying the report is an answer, not an error
    assert report["ready"] is False
    assert report["checks"]["redis"]["ok"] is True
    assert report["checks"]["workers"]["ok"] is False


def test_connection_refused_is_a_connection_error_naming_the_url() -> None:
    url = unused_url()
    with SkyserveClient(url, timeout=3) as sky, pytest.raises(SkyserveConnectionError) as caught:
        sky.tasks()
    assert url in str(caught.value) and "SKYSERVE_URL" in str(caught.value)


class _Recording(httpx.HTTPTransport):
    """A real HTTP transport that remembers what it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


def test_url_and_api_key_come_from_the_environment(
    live_api: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKYSERVE_URL", live_api.url + "/")
    monkeypatch.setenv("SKYSERVE_API_KEY", "s3cret")
    transport = _Recording()
    with SkyserveClient(transport=transport) as sky:
        assert sky.url == live_api.url
        assert sky.tasks()
    request = transport.sent[0]
    assert str(request.url) == live_api.url + "/v1/tasks"
    assert request.headers["authorization"] == "Bearer s3cret"
    with SkyserveClient(api_key="", transport=(plain := _Recording())) as sky:
        sky.tasks()  # an explicit empty key sends no header
    assert "authorization" not in plain.sent[0].headers


# -- targets (JSON POST /v1/jobs) ----------------------------------------------------------------
def test_submit_target_by_name_and_position(sky: SkyserveClient) -> None:
    by_name = sky.submit_target(name="M 33", tasks=["inclination"])
    assert by_name.status == JobStatus.QUEUED and by_name.input.kind == "target"
    assert by_name.input.resolved
    by_position = sky.submit_target(ra="01h33m50.9s", dec="+30d39m37s", fov_arcmin=5)
    assert by_position.input.kind == "target" and by_position.input.fov_arcmin == 5


def test_unknown_target_name_is_a_404_with_suggestions(sky: SkyserveClient) -> None:
    try:
        sky.submit_target(name="NGC 2244x")
    except SkyserveAPIError as exc:
        assert exc.status == 404
        assert "suggestions" in exc.problem
    else:
        pytest.fail("an unknown name was accepted")


@pytest.mark.parametrize(
    "target",
    [{}, {"pgc": 1, "name": "M33"}, {"ra": 10.0}, {"name": "M33", "ra": 1.0, "dec": 2.0}],
)
def test_submit_target_needs_exactly_one_target(target: dict) -> None:
    with pytest.raises(ValueError, match="target|ra and dec"):
        target_call(
            **{"pgc": None, "name": None, "ra": None, "dec": None, "fov_arcmin": None} | target,
            tasks=None,
            versions=None,
            idempotency_key=None,
        )


# -- waiting helpers ---------------------------------------------------------------------------
def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after(httpx.Response(200, headers={"Retry-After": "3"})) == 3.0
    assert retry_after(httpx.Response(200)) is None
    assert retry_after(httpx.Response(200, headers={"Retry-After": "soon"})) is None
    past = retry_after(
        httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    )
    assert past == 0.0


def test_deadline_pauses_for_retry_after_but_never_past_the_end() -> None:
    deadline = Deadline(10)
    assert deadline.pause(None, 0.5) == 0.5
    assert deadline.pause(2.0, 0.5) == 2.0  # no sooner than the server's Retry-After
    assert deadline.pause(0.5, 2.0) == 2.0  # nor than the caller's poll
    assert deadline.long_poll() <= 10
    assert Deadline(0.2).pause(5.0, 0.5) <= 0.2
    assert Deadline(None).long_poll() == 30.0


# -- the async client ----------------------------------------------------------------------------
def test_async_client_submits_waits_and_reports_problems(
    live_api: LiveServer, image: Path, worker: StandInWorker
) -> None:
    async def scenario() -> tuple[Job, Job, Job, SkyserveAPIError]:
        async with AsyncSkyserveClient(live_api.url) as sky:
            queued = await sky.submit_image(image, tasks=["inclination"])
            done = await sky.wait_job(queued.id, timeout=20, poll=0.1)
            again = await sky.get_job(queued.id)
            try:
                await sky.submit_image(png_bytes(32), tasks="nope")
            except SkyserveAPIError as exc:
                refused = exc
            assert (await sky.tasks())[0]["name"] == "inclination"
            assert (await sky.ready())["ready"] is False
            return queued, done, again, refused

    queued, done, again, refused = asyncio.run(scenario())
    assert queued.status == JobStatus.QUEUED
    assert done.status == JobStatus.SUCCEEDED and again.status == JobStatus.SUCCEEDED
    assert done.result.tasks["inclination"].value == VALUE
    assert refused.status == 422 and refused.problem["served_tasks"] == ["inclination"]


def test_async_client_cancels_times_out_and_reports_connection_errors(
    live_api: LiveServer,
) -> None:
    async def scenario() -> None:
        async with AsyncSkyserveClient(live_api.url) as sky:
            job = await sky.submit_image(png_bytes(32))
            with pytest.raises(SkyserveTimeoutError):
                await sky.wait_job(job.id, timeout=0.3, poll=0.1)
            assert (await sky.cancel_job(job.id)).status == JobStatus.CANCELLED
        async with AsyncSkyserveClient(unused_url(), timeout=3) as down:
            with pytest.raises(SkyserveConnectionError):
                await down.models()

    asyncio.run(scenario())


# -- batches -------------------------------------------------------------------------------------
@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("id,name,note\nA,M33,keep me\nB,NGC 224,\nC,NoSuchGalaxy,x\n")
    return path


def test_batch_from_a_csv_runs_to_the_end_and_downloads(
    sky: SkyserveClient, catalog: Path, worker: StandInWorker, tmp_path: Path
) -> None:
    batch = sky.submit_batch(catalog, tasks=["inclination"])
    assert batch.progress.total == 3 and batch.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    assert sky.get_batch(batch.id).id == batch.id
    seen = list(sky.iter_batch_progress(batch.id, poll=0.1, timeout=20))
    final = seen[-1]
    assert final.status == JobStatus.SUCCEEDED
    assert (final.progress.done, final.progress.failed) == (2, 1)
    table = sky.download_batch_results(batch.id, dest=tmp_path / "out" / "results.csv")
    rows = list(csv.DictReader(table.open()))
    assert [r["id"] for r in rows] == ["A", "B", "C"]
    assert rows[0]["note"] == "keep me" and rows[0]["status"] == "succeeded"
    assert rows[2]["status"] == "failed"
    as_json = sky.download_batch_results(batch.id, format="json", dest=tmp_path / "r.json")
    assert [r["id"] for r in json.loads(as_json.read_text())] == ["A", "B", "C"]
    assert not list(tmp_path.rglob("*.part"))


def test_batch_from_rows_in_memory_waits_cancels_and_times_out(sky: SkyserveClient) -> None:
    batch = sky.submit_batch([{"id": "1", "pgc": "2557"}, {"id": "2", "name": "M31"}])
    assert batch.progress.total == 2
    with pytest.raises(SkyserveTimeoutError):
        sky.wait_batch(batch.id, timeout=0.3, poll=0.1)  # no worker here
    assert sky.cancel_batch(batch.id).status == JobStatus.CANCELLED
    assert sky.wait_batch(batch.id, timeout=5).status == JobStatus.CANCELLED


def test_batch_problems_are_api_errors(sky: SkyserveClient, tmp_path: Path) -> None:
    with pytest.raises(SkyserveAPIError) as caught:
        sky.get_batch("f" * 32)
    assert caught.value.status == 404
    odd = tmp_path / "catalog.txt"
    odd.write_text("id\n1\n")
    with pytest.raises(ValueError, match=r"\.csv, \.json or \.zip"):
        sky.submit_batch(odd)
