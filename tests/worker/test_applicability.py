"""An inclination answer says whether it applies, from evidence run in the same job.

A real registry holds a tiny inclination ensemble and a tiny rejection model whose
``face_on`` output fires for images bright at the top; jobs run through the worker's
own path (``answer_job``) against a real Redis.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from services.worker.runtime import get_runtime
from services.worker.settings import WorkerSettings
from services.worker.tasks import answer_job
from shared.jobstore import JobStore
from shared.registry import Manifest
from shared.taskdefs import get_task_definition
from tests.worker.onnx_models import SIZE, linear_model, publish
from tests.worker.payloads import submit_image_job

REJECTION = get_task_definition("rejection").output_names


def half_bright_png(top: bool) -> bytes:
    """A 32 px square, white on its top (or bottom) half and black elsewhere."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    if top:
        pixels[:16] = 255
    else:
        pixels[16:] = 255
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def rejection_matrix() -> np.ndarray:
    """face_on: + for the top half, − for the bottom; low_snr: − everywhere; others 0."""
    grid = np.zeros((SIZE, SIZE, 3, len(REJECTION)), np.float32)
    grid[: SIZE // 2, :, :, REJECTION.index("face_on")] = 0.2
    grid[SIZE // 2 :, :, :, REJECTION.index("face_on")] = -0.2
    grid[..., REJECTION.index("low_snr")] = -0.2
    return grid.reshape(SIZE * SIZE * 3, len(REJECTION))


@pytest.fixture
def settings(redis_url: str, key_prefix: str, registry_root: Path,
             regression_v1: Manifest) -> WorkerSettings:
    return WorkerSettings(redis_url=redis_url, key_prefix=key_prefix, celery_queue=key_prefix,
                          models_dir=registry_root, intra_op_threads=1, warm_up=False)


@pytest.fixture
def store(settings: WorkerSettings) -> JobStore:
    client = redis.Redis.from_url(settings.redis_url)
    yield JobStore(client, prefix=settings.key_prefix, ttl_seconds=600)
    client.close()


@pytest.fixture
def with_rejection(registry_root: Path) -> Manifest:
    matrix = rejection_matrix()
    return publish(registry_root, {"m0": lambda p: linear_model(p, matrix=matrix)},
                   task="rejection", activation="sigmoid", tta=("identity",))


def test_inclination_alone_is_judged_by_evidence_it_did_not_ask_for(
    settings: WorkerSettings, store: JobStore, with_rejection: Manifest
) -> None:
    runtime = get_runtime(settings)
    face_on = answer_job(runtime, submit_image_job(store, half_bright_png(top=True)))
    disk = answer_job(runtime, submit_image_job(store, half_bright_png(top=False)))

    for result in (face_on, disk):  # the evidence answer itself is not returned
        assert list(result.tasks) == ["inclination"]
        assert result.models == {"inclination": 1}
        assert "evidence:rejection" in result.timings_ms
    flagged, kept = face_on.tasks["inclination"], disk.tasks["inclination"]
    assert flagged.applicable is False and "face-on" in (flagged.applicable_reason or "")
    assert flagged.evidence["rejection:face_on"] > 0.5
    assert kept.applicable is True and kept.applicable_reason is None
    assert kept.evidence["rejection:face_on"] < 0.5 and kept.evidence["rejection:low_snr"] < 0.5
    # The evidence is the rejection model's own answer for the same image.
    both = answer_job(runtime, submit_image_job(store, half_bright_png(top=True),
                                                tasks=("inclination", "rejection")))
    assert list(both.tasks) == ["inclination", "rejection"]
    assert both.tasks["rejection"].probabilities["face_on"] == pytest.approx(
        flagged.evidence["rejection:face_on"])
    assert both.tasks["inclination"].applicable is False


def test_without_evidence_models_nothing_is_judged(
    settings: WorkerSettings, store: JobStore
) -> None:
    result = answer_job(get_runtime(settings),
                        submit_image_job(store, half_bright_png(top=True)))
    answer = result.tasks["inclination"]
    assert answer.applicable is None and answer.evidence is None
    assert not any(lap.startswith("evidence:") for lap in result.timings_ms)
