"""The image a model saw, as a PNG a person can look at.

A target job's worker keeps the rotated, cropped cutout it answered on. An upload is
rendered through the same decoding and square padding as
:func:`shared.preprocessing.preprocess` (FITS stretched, greyscale made RGB, padded to
square, never stretched), at a size a page can show rather than the model's 64 px: by
the worker when it answers (the upload itself leaves Redis when its job ends), or by the
API while the job still waits.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.preprocessing import DecodedImage, to_model_input
from shared.registry import InputSpec

__all__ = ["SEEN_SIDE", "seen_png"]

#: Side of the rendered square, in pixels.
SEEN_SIDE = 256


def seen_png(
    data: bytes | DecodedImage, *, max_pixels: int, side: int = SEEN_SIDE
) -> bytes:
    """PNG of ``data`` decoded and padded to a ``side``-pixel square as the models take it.

    ``data`` is the upload's bytes, or the :class:`~shared.preprocessing.DecodedImage`
    the worker already decoded for the models (no second decode: a JPEG's draft decode
    for a model keeps at least :data:`~shared.preprocessing.DRAFT_MIN_SIDE` pixels).

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
        As :func:`shared.preprocessing.decode_pixels`.
    """
    decoded = data if isinstance(data, DecodedImage) else DecodedImage(data, max_pixels=max_pixels)
    square = to_model_input(decoded.pixels_covering(side), InputSpec(size=side))
    pixels8 = np.clip(np.rint(square * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # Fast zlib settings: the worker renders this on the job's path; a 256 px square
    # stays small either way.
    Image.fromarray(pixels8, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
