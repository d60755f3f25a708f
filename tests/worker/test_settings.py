"""Worker settings and the Celery app built from them."""

from __future__ import annotations

import onnxruntime
import pytest
from pydantic import ValidationError

from services.worker.celery_app import create_celery_app
from services.worker.settings import WorkerSettings
from shared.messages import PREDICT_TASK


def test_providers_are_filtered_by_what_onnxruntime_has() -> None:
    available = onnxruntime.get_available_providers()
    settings = WorkerSettings(onnx_providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])

    assert settings.available_providers() == ["CPUExecutionProvider"]
    assert all(p in available for p in WorkerSettings().available_providers())


def test_no_available_provider_falls_back_to_the_cpu() -> None:
    settings = WorkerSettings(onnx_providers=["NoSuchExecutionProvider"])
    assert settings.available_providers() == ["CPUExecutionProvider"]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYSERVE_ONNX_PROVIDERS", '["CPUExecutionProvider"]')
    monkeypatch.setenv("SKYSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("SKYSERVE_CELERY_QUEUE", "q-test")

    settings = WorkerSettings()

    assert settings.onnx_providers == ["CPUExecutionProvider"]
    assert (settings.max_batch_size, settings.celery_queue) == (7, "q-test")


@pytest.mark.parametrize(
    "bad",
    [
        {"heartbeat_interval_seconds": 30, "heartbeat_ttl_seconds": 10},
        {"task_soft_time_limit_seconds": 400, "task_time_limit_seconds": 300},
        {"task_time_limit_seconds": 4000, "visibility_timeout_seconds": 3600},
        {"transient_retries": 9, "max_job_attempts": 9},
        {"lease_seconds": 20, "lease_renew_seconds": 10},
    ],
)
def test_inconsistent_limits_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        WorkerSettings(**bad)


def test_celery_app_delivers_at_least_once() -> None:
    settings = WorkerSettings(
        redis_url="redis://127.0.0.1:1/3", celery_queue="q-test", visibility_timeout_seconds=900
    )
    app = create_celery_app(settings)
    conf = app.conf

    assert app.settings is settings
    assert conf.broker_url == "redis://127.0.0.1:1/3"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 900
    assert conf.task_default_queue == "q-test"
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_ignore_result
    assert conf.task_time_limit < 900
    assert conf.broker_connection_retry_on_startup
    assert "services.worker.tasks" in app.conf.include


def test_predict_task_is_registered_under_the_shared_name() -> None:
    app = create_celery_app(WorkerSettings(celery_queue="q-test"))
    app.loader.import_default_modules()  # what the worker does at start

    task = app.tasks[PREDICT_TASK]
    assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
