"""Real image payloads and job records for worker tests."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from shared.jobstore import JobStore, new_job_id
from shared.schemas import ImageInput, Job

__all__ = ["png_bytes", "submit_image_job"]


def png_bytes(*, width: int = 12, height: int = 9, seed: int = 0) -> bytes:
    """A real RGB PNG with random pixels (not square, so padding is exercised)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def submit_image_job(
    store: JobStore,
    payload: bytes,
    *,
    tasks: tuple[str, ...] = ("inclination",),
    versions: dict[str, int] | None = None,
    attempts: int = 0,
) -> Job:
    """Store a queued job for ``payload`` as the API does (without enqueueing it).

    The input description is read from the PNG header when it has one; a payload that
    is not a readable image keeps a made-up 12x9 (the worker must still fail it cleanly).
    """
    try:
        width, height = Image.open(io.BytesIO(payload)).size
    except OSError:
        width, height = 12, 9
    job = Job(
        id=new_job_id(),
        tasks=list(tasks),
        versions=versions or {},
        attempts=attempts,
        input=ImageInput(
            filename="galaxy.png",
            content_type="image/png",
            size_bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            format="PNG",
            width=width,
            height=height,
        ),
    )
    return store.create(job, payload)
