"""A hostile corpus through the real API and a real worker (issue 8).

Every file is made here (no committed binaries) and sent twice: as a single upload
(``POST /v1/jobs``) and inside one zip batch, so it reaches the worker even when the
API's header check would stop it first. Each must end as a 4xx problem document or
a job/row ``failed`` with a readable reason (never the generic internal problem) or
a real answer; the worker must stay alive, answer a sentinel afterwards, and its
peak memory (``VmHWM`` of the worker process, from /proc) must stay under the bound
stated below. The run is keyed (auth on) with JSON logs, and neither the key nor the
image bytes may appear in the API's or the worker's logs.

Memory bound, stated: with ``max_image_pixels`` = 4,000,000 the worker's peak RSS
grows over its idle peak (models loaded) by at most 250 MiB while it answers the
single uploads, and by at most 600 MiB once it has also run the whole corpus as one
batch chunk (8 fetch threads preprocessing at once, then ONNX Runtime's arena for a
session run of 32 images x 4 test-time turns). Decoding is bounded by the pixel limit
(a 4 MP image is 48 MB as float32 RGB, plus Pillow's copy and the padded strip);
nothing depends on an image's declared shape any more (a 919-byte 40000x20 PNG used
to ask for 17.9 GiB).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from astropy.io import fits
from fastapi.testclient import TestClient
from PIL import Image

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.apikeys import KeyStore
from tests.helpers.images import bomb_png, ellipse, encode
from tests.helpers.processes import log_tail, running_worker, worker_env
from tests.integration.conftest import DEFAULT_MODELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MAX_PIXELS = 4_000_000
SINGLE_BOUND_MIB = 250
BATCH_BOUND_MIB = 600
TERMINAL = ("succeeded", "failed", "cancelled")


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _fits(*hdus: object) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(buf)  # type: ignore[arg-type]
    return buf.getvalue()


def _flip(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    raw = bytearray(data)
    for i in rng.integers(len(raw) // 4, len(raw), size=max(8, len(raw) // 200)):
        raw[int(i)] ^= 0xFF
    return bytes(raw)


def corpus() -> list[tuple[str, str, str, bytes]]:
    """(label, file name, content type, bytes): made fresh on every run."""
    galaxy = ellipse(96, axis_ratio=0.4, seed=3)
    plane = galaxy[..., 0].astype(np.float32) * 40.0 + 100.0
    valid = {
        "png": ("PNG", _save(Image.fromarray(galaxy), "PNG")),
        "jpg": ("JPEG", encode(galaxy, "JPEG")),
        "gif": ("GIF", _save(Image.fromarray(galaxy).convert("P"), "GIF")),
        "tif": ("TIFF", encode(galaxy, "TIFF")),
        "webp": ("WEBP", encode(galaxy, "WEBP")),
        "fits": ("FITS", _fits(fits.PrimaryHDU(plane))),
    }
    items: list[tuple[str, str, str, bytes]] = [("empty file", "empty.png", "image/png", b"")]
    for ext, (fmt, data) in valid.items():
        kind = "application/fits" if ext == "fits" else f"image/{ext}"
        items.append((f"{fmt} valid", f"ok.{ext}", kind, data))
        items.append((f"{fmt} truncated", f"trunc.{ext}", kind, data[: len(data) // 2]))
        items.append((f"{fmt} bit-flipped", f"flip.{ext}", kind, _flip(data, seed=len(items))))
    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (30, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    sixteen = Image.fromarray((galaxy[..., 0].astype(np.uint16) * 257))
    float_nan = galaxy[..., 0].astype(np.float32)
    float_nan[10:20, 10:20] = np.nan
    float_inf = galaxy[..., 0].astype(np.float32)
    float_inf[0, 0], float_inf[1, 1] = np.inf, -np.inf
    fits_nan = plane.copy()
    fits_nan[:, :5] = np.nan
    huge = fits.Header()
    huge["SIMPLE"], huge["BITPIX"], huge["NAXIS"] = True, -32, 3
    huge["NAXIS1"], huge["NAXIS2"], huge["NAXIS3"] = 64, 64, 2_000_000
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))])
    items += [
        ("PNG named .jpg", "png.jpg", "image/jpeg", valid["png"][1]),
        ("PNG sent as text/plain", "png.txt", "text/plain", valid["png"][1]),
        ("text named .png", "text.png", "image/png", b"definitely not an image\n" * 10),
        ("HTML named .fits", "page.fits", "application/fits", b"<html><body>hi</body></html>"),
        ("PDF", "doc.pdf", "application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        ("decompression bomb (header 100000x100000)", "bomb.png", "image/png", bomb_png()),
        ("pixel bomb (3000x3000 black PNG)", "black.png", "image/png", _save(Image.new("L", (3000, 3000)), "PNG")),
        ("at the pixel limit (2000x2000)", "big.png", "image/png", _save(Image.new("RGB", (2000, 2000)), "PNG")),
        ("animated GIF", "anim.gif", "image/gif", buf.getvalue()),
        ("16-bit PNG", "sixteen.png", "image/png", _save(sixteen, "PNG")),
        ("CMYK JPEG", "cmyk.jpg", "image/jpeg", _save(Image.fromarray(galaxy).convert("CMYK"), "JPEG")),
        ("palette PNG", "palette.png", "image/png", _save(Image.fromarray(galaxy).convert("P"), "PNG")),
        ("RGBA PNG", "rgba.png", "image/png", _save(Image.fromarray(galaxy).convert("RGBA"), "PNG")),
        ("1x1 PNG", "one.png", "image/png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        ("10000x10 PNG", "strip.png", "image/png", _save(Image.new("L", (10_000, 10)), "PNG")),
        ("40000x20 PNG", "line.png", "image/png", _save(Image.new("L", (40_000, 20)), "PNG")),
        ("2000x100 PNG (20:1)", "wide.png", "image/png", _save(Image.fromarray(np.tile(galaxy, (1, 20, 1))[:100, :2000]), "PNG")),
        ("float TIFF with NaN", "nan.tif", "image/tiff", _save(Image.fromarray(float_nan, mode="F"), "TIFF")),
        ("float TIFF with inf", "inf.tif", "image/tiff", _save(Image.fromarray(float_inf, mode="F"), "TIFF")),
        ("float TIFF all NaN", "allnan.tif", "image/tiff", _save(Image.fromarray(np.full((16, 16), np.nan, np.float32), mode="F"), "TIFF")),
        ("FITS with NaN", "nan.fits", "application/fits", _fits(fits.PrimaryHDU(fits_nan))),
        ("FITS no image HDU", "table.fits", "application/fits", _fits(fits.PrimaryHDU(), table)),
        ("FITS 1-D", "oned.fits", "application/fits", _fits(fits.PrimaryHDU(np.ones(100, np.float32)))),
        ("FITS 3-D (g,r,i)", "rgb.fits", "application/fits", _fits(fits.PrimaryHDU(np.stack([plane] * 3)))),
        ("FITS 3-D (8 planes)", "cube.fits", "application/fits", _fits(fits.PrimaryHDU(np.stack([plane] * 8)))),
        ("FITS 4-D (1,1,H,W)", "fourd.fits", "application/fits", _fits(fits.PrimaryHDU(plane[None, None]))),
        ("FITS declaring 64x64x2,000,000", "huge.fits", "application/fits", huge.tostring().encode() + b"\0" * 2880),
    ]
    return items


def _wait(api: TestClient, path: str, headers: dict[str, str], timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = api.get(path, params={"wait": 5} if "/jobs/" in path else None, headers=headers).json()
        if record["status"] in TERMINAL:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def hostile(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("hostile") / "worker.log"
    env = worker_env(
        redis_url=redis_url, key_prefix=prefix, models_dir=DEFAULT_MODELS,
        max_image_pixels=MAX_PIXELS, cutout_provider="none", log_format="json",
    )
    settings = ApiSettings(
        redis_url=redis_url, key_prefix=prefix, celery_queue=prefix, models_dir=DEFAULT_MODELS,
        max_image_pixels=MAX_PIXELS, max_wait_seconds=10.0, auth_mode="keys",
        log_format="json", rate_limit_per_minute=0,
    )
    client = redis.Redis.from_url(redis_url)
    token, _ = KeyStore(client, prefix=prefix).create(["submit", "read"], note="hostile corpus")
    try:
        with running_worker(env, log_file=log, pool="solo", served="inclination") as (proc, _):
            with TestClient(create_app(settings), raise_server_exceptions=False) as api:
                yield {"api": api, "proc": proc, "log": log, "token": token,
                       "headers": {"Authorization": f"Bearer {token}"}}
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        keys += list(client.scan_iter(match=f"_kombu.binding.{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


def _readable(error: dict | None) -> bool:
    return bool(error and error.get("detail") and error.get("code") not in (None, "internal"))


def test_every_hostile_file_gets_a_clear_answer_and_the_worker_survives(
    hostile: dict, caplog: pytest.LogCaptureFixture
) -> None:
    api, headers, proc = hostile["api"], hostile["headers"], hostile["proc"]
    sentinel = encode(ellipse(64, seed=9))
    files = {"file": ("sentinel.png", sentinel, "image/png")}
    warm = api.post("/v1/jobs", files=files, data={"tasks": "inclination"}, headers=headers)
    assert _wait(api, warm.headers["location"], headers)["status"] == "succeeded", log_tail(hostile["log"])
    idle_peak = _peak_rss_mib(proc.pid)

    rows = []
    caplog.set_level(logging.INFO)
    items = corpus()
    jobs: dict[str, str] = {}
    for label, name, ctype, data in items:
        resp = api.post("/v1/jobs", files={"file": (name, data, ctype)}, data={"tasks": "inclination"},
                        headers=headers)
        assert resp.status_code < 500, (label, resp.text)
        if resp.status_code == 202:
            jobs[label] = resp.headers["location"]
            rows.append([label, "202"])
        else:
            assert resp.headers["content-type"] == "application/problem+json", label
            body = resp.json()
            assert 400 <= resp.status_code < 500 and body["detail"], (label, body)
            rows.append([label, f"{resp.status_code} {body['code']}: {body['detail'][:70]}"])
    for row in rows:
        if row[1] == "202":
            job = _wait(api, jobs[row[0]], headers)
            if job["status"] == "succeeded":
                value = job["result"]["tasks"]["inclination"]["value"]
                assert np.isfinite(value), row
                row[1] = f"202 → succeeded ({value:.1f}°)"
            else:
                assert job["status"] == "failed" and _readable(job["error"]), (row, job)
                row[1] = f"202 → failed {job['error']['code']}: {job['error']['detail'][:60]}"

    single_peak = _peak_rss_mib(proc.pid)

    # The same files inside one zip: no API header check, every one reaches the worker.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        lines = ["id,file"]
        for n, (label, name, _, data) in enumerate(items):
            member = f"f{n:02d}{Path(name).suffix or '.png'}"
            zf.writestr(member, data)
            lines.append(f"{n},{member}")
        zf.writestr("catalog.csv", "\n".join(lines) + "\n")
    batch = api.post("/v1/batches?tasks=inclination",
                     files={"file": ("corpus.zip", archive.getvalue(), "application/zip")}, headers=headers)
    assert batch.status_code == 202, batch.text
    done = _wait(api, batch.headers["location"], headers, timeout_s=300)
    assert done["progress"]["pending"] == 0 and done["status"] == "succeeded"
    results = json.loads(api.get(f"{batch.headers['location']}/results", params={"format": "json"},
                                 headers=headers).text)
    assert len(results) == len(items)
    for result, row in zip(sorted(results, key=lambda r: r["row"]), rows, strict=True):
        if result["status"] == "succeeded":
            assert np.isfinite(result["result"]["inclination"]["value"])
            row.append("succeeded")
        else:
            assert _readable(result["error"]), (row, result)
            row.append(f"failed {result['error']['code']}")

    # Alive, still answering, memory within the stated bound.
    assert proc.poll() is None, log_tail(hostile["log"])
    again = api.post("/v1/jobs", files=files, data={"tasks": "inclination"}, headers=headers)
    assert _wait(api, again.headers["location"], headers)["status"] == "succeeded"
    peak = _peak_rss_mib(proc.pid)
    table = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows)
    print(f"\n| input | single upload | in a zip batch |\n|---|---|---|\n{table}")
    print(f"worker peak RSS: idle {idle_peak:.0f} MiB; after the single uploads "
          f"+{single_peak - idle_peak:.0f} MiB (bound +{SINGLE_BOUND_MIB}); after the batch "
          f"+{peak - idle_peak:.0f} MiB (bound +{BATCH_BOUND_MIB})")
    assert single_peak - idle_peak < SINGLE_BOUND_MIB, f"+{single_peak - idle_peak:.0f} MiB"
    assert peak - idle_peak < BATCH_BOUND_MIB, f"+{peak - idle_peak:.0f} MiB"

    # Nothing secret or binary in the logs: not the key, not the image bytes.
    worker_log = hostile["log"].read_text(errors="replace")
    api_log = "\n".join(r.getMessage() for r in caplog.records)
    secret = hostile["token"].split("_", 2)[2]
    sample = sentinel[100:140]
    for text, where in ((worker_log, "worker"), (api_log, "api")):
        assert secret not in text, f"the API key is in the {where} log"
        assert base64.b64encode(sample).decode()[:30] not in text, where
        assert repr(sample)[2:40] not in text, f"image bytes in the {where} log"
    # Structured: the worker's lines are JSON and name the job they were about.
    job_lines = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    assert any(entry.get("job_id") for entry in job_lines), worker_log[-2000:]
    access = [r for r in caplog.records if r.name == "skyserve.access"]
    assert access and all(getattr(r, "key_id", None) for r in access if "/v1/" in r.getMessage())
