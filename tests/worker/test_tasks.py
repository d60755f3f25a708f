"""The predict task run in this process against a real Redis and a real registry.

These check how each outcome lands in the job record; ``test_worker_process.py``
runs the same paths through a real broker and a real worker process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
from celery import Task

from services.worker.celery_app import create_celery_app
from services.worker.runtime import get_runtime
from services.worker.settings import WorkerSettings
from services.worker.tasks import answer_job
from shared.jobstore import JobStore, new_job_id
from shared.messages import PREDICT_TASK
from shared.preprocessing import preprocess
from shared.registry import Manifest
from shared.schemas import Job, JobStatus, TargetInput
from tests.helpers.processes import free_port
from tests.worker.onnx_models import batch_of_one_model, expected_regression, publish
from tests.worker.payloads import png_bytes, submit_image_job


@pytest.fixture
def settings(
    redis_url: str, key_prefix: str, registry_root: Path, regression_v1: Manifest
) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        celery_queue=key_prefix,
        models_dir=registry_root,
        intra_op_threads=1,
        warm_up=False,
        transient_retries=1,
        max_job_attempts=3,
    )


@pytest.fixture
def store(settings: WorkerSettings) -> JobStore:
    client = redis.Redis.from_url(settings.redis_url)
    yield JobStore(client, prefix=settings.key_prefix, ttl_seconds=600)
    client.close()


@pytest.fixture
def task(settings: WorkerSettings) -> Task:
    app = create_celery_app(settings)
    app.loader.import_default_modules()
    return app.tasks[PREDICT_TASK]


def run(task: Task, job_id: str) -> str:
    """Execute the task body here (no broker); its return value is the final status."""
    return task.apply(kwargs={"job_id": job_id}).get()


def test_answer_job_matches_a_hand_computation(
    settings: WorkerSettings, store: JobStore, regression_v1: Manifest
) -> None:
    payload = png_bytes()
    job = submit_image_job(store, payload, tasks=("inclination", "inclination"))

    result = answer_job(get_runtime(settings), job)

    image = preprocess(payload, regression_v1.input)[np.newaxis]
    _, values = expected_regression(image, regression_v1)
    answer = result.tasks["inclination"]
    assert list(result.tasks) == ["inclination"]
    assert result.models == {"inclination": 1}
    assert answer.value == pytest.approx(float(np.median(values[:, 0])), rel=1e-5)
    assert [m.value for m in answer.members] == pytest.approx(values[:, 0], rel=1e-5)
    assert {"load_models", "preprocess", "infer:inclination", "total"} <= set(result.timings_ms)


def test_success_is_stored_once(task: Task, store: JobStore) -> None:
    job = submit_image_job(store, png_bytes())

    assert run(task, job.id) == "succeeded"
    first = store.get(job.id)
    assert (first.status, first.attempts, first.progress.done) == (JobStatus.SUCCEEDED, 1, 1)
    assert first.result is not None and first.result.models == {"inclination": 1}

    # A redelivery finds the job answered: nothing is recomputed or rewritten.
    assert run(task, job.id) == "succeeded"
    assert store.get(job.id) == first


@pytest.mark.parametrize(
    ("payload", "tasks", "versions", "code", "words"),
    [
        (png_bytes()[:60], ("inclination",), None, "invalid-image", "corrupt or truncated"),
        (b"", ("inclination",), None, "invalid-image", "The file is empty"),
        (b"%PDF-1.7", ("inclination",), None, "unsupported-media-type", "Send PNG"),
        (png_bytes(), ("inclination", "warp-drive"), None, "unknown-task", "'warp-drive'"),
        (png_bytes(), ("inclination",), {"inclination": 9}, "unknown-model-version", "version 9"),
    ],
)
def test_client_mistakes_end_failed_with_a_readable_reason(
    task: Task,
    store: JobStore,
    payload: bytes,
    tasks: tuple[str, ...],
    versions: dict[str, int] | None,
    code: str,
    words: str,
) -> None:
    job = submit_image_job(store, payload, tasks=tasks, versions=versions)

    assert run(task, job.id) == "failed"

    failed = store.get(job.id)
    assert failed.status == JobStatus.FAILED and failed.result is None
    assert failed.error is not None and failed.error.code == code
    assert words in failed.error.detail
    assert failed.progress.failed == 1


def test_unexpected_errors_fail_the_job_naming_the_exception(
    task: Task, store: JobStore, registry_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Version 2 loads, but its session raises inside ONNX Runtime for a batch of 2
    # (identity + rot180 of one image): a bug, not a client mistake.
    publish(registry_root, {"m0": batch_of_one_model})
    job = submit_image_job(store, png_bytes(), versions={"inclination": 2})

    assert run(task, job.id) == "failed"

    error = store.get(job.id).error
    assert error is not None and (error.code, error.status) == ("internal", 500)
    assert "internal problem (Fail)" in error.detail  # ONNX Runtime's exception type
    assert any(r.exc_info for r in caplog.records if "unexpected error" in r.getMessage())


def test_a_cancelled_job_is_left_alone(task: Task, store: JobStore) -> None:
    job = submit_image_job(store, png_bytes())
    store.cancel(job.id)

    assert run(task, job.id) == "cancelled"

    after = store.get(job.id)
    assert (after.status, after.attempts, after.result) == (JobStatus.CANCELLED, 0, None)


def test_a_job_that_keeps_killing_its_worker_is_given_up(
    task: Task, store: JobStore, settings: WorkerSettings
) -> None:
    # As if three deliveries had started and their processes died.
    job = submit_image_job(store, png_bytes(), attempts=settings.max_job_attempts)

    assert run(task, job.id) == "failed"

    error = store.get(job.id).error
    assert error is not None and "started 3 times without finishing" in error.detail


def test_a_vanished_job_is_acknowledged_quietly(task: Task) -> None:
    assert run(task, new_job_id()) == "missing"


def test_targets_without_a_cutout_service_fail_readably(
    settings: WorkerSettings, store: JobStore
) -> None:
    # Target jobs succeeding against a real cutout server: tests/integration/test_targets.py.
    app = create_celery_app(settings.model_copy(update={"cutout_provider": "none"}))
    app.loader.import_default_modules()
    target = TargetInput(query={"pgc": 2557}, ra_deg=23.46, dec_deg=30.66, fov_arcmin=60.0)
    job = store.create(Job(id=new_job_id(), tasks=["inclination"], input=target), None)

    assert run(app.tasks[PREDICT_TASK], job.id) == "failed"
    error = store.get(job.id).error
    assert error.code == "cutout-unavailable" and "no cutout service" in error.detail


def test_a_redis_outage_is_retried_then_given_up(
    settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on this port: every Redis call is refused, a named transient error.
    offline = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_celery_app(offline)
    app.loader.import_default_modules()

    outcome = app.tasks[PREDICT_TASK].apply(kwargs={"job_id": new_job_id()})

    assert outcome.failed() and isinstance(outcome.result, redis.ConnectionError)
    retries = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(retries) == offline.transient_retries + 1  # the first try, then each retry
