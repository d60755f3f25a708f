"""GET /v1/jobs/{id}/image: what the models saw, for uploads as well as targets."""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers.images import ellipse, encode


def test_an_upload_is_shown_padded_to_square(client: TestClient) -> None:
    wide = ellipse(80, axis_ratio=0.4, seed=2)[20:60]  # 40 x 80: padded top and bottom
    job = client.post("/v1/jobs", files={"file": ("wide.png", encode(wide), "image/png")}).json()
    resp = client.get(f"/v1/jobs/{job['id']}/image")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    seen = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    assert seen.shape == (256, 256, 3)
    assert seen[:50].max() == 0 and seen[-50:].max() == 0  # black padding, never stretched
    assert seen[100:156].max() > 100


def test_a_fits_upload_is_shown_stretched(client: TestClient) -> None:
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.outer(np.hanning(48), np.hanning(48)).astype("float32") * 1e4).writeto(buffer)
    job = client.post(
        "/v1/jobs", files={"file": ("g.fits", buffer.getvalue(), "application/fits")}
    ).json()
    seen = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/image").content))
    assert seen.size == (256, 256) and np.asarray(seen).max() > 200


def test_unknown_job_image_is_404(client: TestClient) -> None:
    resp = client.get(f"/v1/jobs/{'0' * 32}/image")
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
