"""The API's /metrics, scraped after real requests against a real Redis."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.api.settings import ApiSettings
from tests.helpers.images import png_bytes


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def test_requests_by_route_and_status_jobs_and_queue_depth(client: TestClient, settings: ApiSettings) -> None:
    def count(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    before = _samples(client)
    job = client.post("/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")}).json()
    client.get(f"/v1/jobs/{job['id']}")
    client.get("/v1/jobs/" + "0" * 32)  # 404
    client.delete(f"/v1/jobs/{job['id']}")
    after = _samples(client)
    seconds = "skyserve_http_request_seconds_count"
    assert count(after, seconds, method="POST", route="/v1/jobs", status="202") - count(
        before, seconds, method="POST", route="/v1/jobs", status="202"
    ) == 1
    assert count(after, seconds, method="GET", route="/v1/jobs/{job_id}", status="200") - count(
        before, seconds, method="GET", route="/v1/jobs/{job_id}", status="200"
    ) == 1
    assert count(after, seconds, method="GET", route="/v1/jobs/{job_id}", status="404") - count(
        before, seconds, method="GET", route="/v1/jobs/{job_id}", status="404"
    ) == 1
    assert count(after, "skyserve_jobs_submitted_total", kind="image") - count(
        before, "skyserve_jobs_submitted_total", kind="image"
    ) == 1
    assert count(after, "skyserve_jobs_cancelled_total", kind="job") - count(
        before, "skyserve_jobs_cancelled_total", kind="job"
    ) == 1
    # The one message sits in this test's queue (no worker takes it).
    assert count(after, "skyserve_queue_depth", queue=settings.celery_queue) == 1
