"""Issue 11: each image is decoded once per job or batch row, whatever the tasks.

Runs the real worker paths (``answer_job``, the cutout provider, ``prepare``) against a
real Redis and a real registry, counting pixel decodes and PNG encodes in Pillow and the
FITS reader (``tests/helpers/decodes.py``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from services.worker.answers import load_models, prepare
from services.worker.orientation import encode_png
from services.worker.runtime import get_runtime
from services.worker.settings import WorkerSettings
from services.worker.tasks import answer_job
from shared.errors import CutoutUnavailable
from shared.jobstore import JobStore, new_job_id
from shared.preprocessing import preprocess
from shared.registry import Manifest
from shared.schemas import Job, TargetInput
from tests.helpers.decodes import counting_decodes, decodes
from tests.helpers.images import ellipse, encode
from tests.worker.onnx_models import expected_regression
from tests.worker.payloads import submit_image_job

M31 = TargetInput(
    query={"name": "M31"},
    resolved={"name": "NGC0224", "identifiers": ["M31", "PGC 2557"]},
    ra_deg=10.6848,
    dec_deg=41.2689,
    fov_arcmin=266.7,
    pa_deg=35.0,
)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "NGC0224.jpg").write_bytes(encode(ellipse(300, axis_ratio=0.4), "JPEG", quality=92))
    return folder


@pytest.fixture
def settings(
    redis_url: str, key_prefix: str, registry_root: Path, regression_v1: Manifest, archive: Path
) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        celery_queue=key_prefix,
        models_dir=registry_root,
        intra_op_threads=1,
        warm_up=False,
        cutout_provider="local",
        cutout_archive_dir=archive,
    )


@pytest.fixture
def store(settings: WorkerSettings) -> JobStore:
    client = redis.Redis.from_url(settings.redis_url)
    yield JobStore(client, prefix=settings.key_prefix, ttl_seconds=600)
    client.close()


def test_a_target_job_decodes_its_cutout_once_and_answers_on_its_seen_image(
    settings: WorkerSettings, store: JobStore, regression_v1: Manifest
) -> None:
    job = store.create(Job(id=new_job_id(), tasks=["inclination"], input=M31), None)
    with counting_decodes() as counts:
        result = answer_job(get_runtime(settings), job)
    # Before issue 11: decoded to check it, to orient it, and again from its PNG (3).
    assert decodes(counts) == 1, counts
    assert counts["encode:PNG"] == 1  # the seen image, for people; the models skip it
    seen = store.seen_image(job.id)
    assert seen is not None and Image.open(io.BytesIO(seen)).format == "PNG"
    # The models answered on exactly the pixels the seen PNG shows.
    image = preprocess(seen, regression_v1.input)[np.newaxis]
    _, values = expected_regression(image, regression_v1)
    answer = result.tasks["inclination"]
    assert [m.value for m in answer.members] == pytest.approx(values[:, 0], rel=1e-5)


def test_an_upload_is_decoded_once_for_its_tasks_and_its_seen_image(
    settings: WorkerSettings, store: JobStore
) -> None:
    payload = encode(ellipse(1024, axis_ratio=0.3), "JPEG", quality=90)  # drafted
    job = submit_image_job(store, payload, tasks=("inclination",))
    with counting_decodes() as counts:
        answer_job(get_runtime(settings), job)
    assert decodes(counts) == 1, counts  # before: once for the models, once for the seen PNG
    assert store.seen_image(job.id) is not None


def test_a_batch_rows_cutout_is_neither_encoded_nor_decoded_again(settings: WorkerSettings) -> None:
    runtime = get_runtime(settings)
    models = load_models(runtime, ["inclination"], {})
    with counting_decodes() as counts:
        pixels = runtime.images.cutout(M31)
        prepared = prepare(pixels, models, max_pixels=settings.max_image_pixels)
    assert decodes(counts) == 1 and counts["encode:PNG"] == 0, counts
    (array,) = prepared.values()
    spec = models["inclination"].manifest.input
    # The same array the old path's PNG round trip gave (PNG is lossless).
    np.testing.assert_array_equal(array, preprocess(encode_png(pixels), spec))


def test_a_cutout_failure_names_the_setting_and_suggests_an_upload(
    settings: WorkerSettings, store: JobStore
) -> None:
    target = M31.model_copy(update={"resolved": {"name": "NGC0598"}, "query": {"name": "M33"}})
    with pytest.raises(CutoutUnavailable) as caught:
        get_runtime(settings).images.cutout(target)
    detail = caught.value.detail
    assert "SKYSERVE_CUTOUT_ARCHIVE_DIR" in detail and "uploading an image" in detail, detail
    # The same words reach the job's record.
    job = store.create(Job(id=new_job_id(), tasks=["inclination"], input=target), None)
    with pytest.raises(CutoutUnavailable, match="SKYSERVE_CUTOUT_ARCHIVE_DIR"):
        answer_job(get_runtime(settings), job)


def test_an_unreachable_survey_names_the_provider_settings(
    settings: WorkerSettings,
) -> None:
    from tests.helpers.processes import free_port

    port = free_port()
    http = settings.model_copy(update={
        "cutout_provider": "http",
        "cutout_url_template": f"http://127.0.0.1:{port}/cutout?ra={{ra}}&dec={{dec}}",
        "cutout_allowed_hosts": [f"127.0.0.1:{port}"],
        "cutout_allow_private_addresses": True,
        "cutout_retries": 0,
        "cutout_timeout_seconds": 0.5,
    })
    from services.worker.imaging import ImageSources

    sources = ImageSources(http)
    try:
        with pytest.raises(CutoutUnavailable) as caught:
            sources.cutout(M31)
    finally:
        sources.close()
    detail = caught.value.detail
    assert "connection failed" in detail and "SKYSERVE_CUTOUT_PROVIDER" in detail, detail
    assert "SKYSERVE_CUTOUT_URL_TEMPLATE" in detail and "uploading an image" in detail, detail
