"""Turn a survey cutout into what a model sees: major axis horizontal, cropped to the field.

Sign convention, reasoned once here. Survey cutouts (SDSS, Legacy Survey) are shown
north up and **east left**. The position angle (PA) of a galaxy is measured from
north through east. With x to the right and y up on the screen, north is (0, 1) and
east is (−1, 0), so the major axis points along

    cos(PA)·N + sin(PA)·E = (−sin PA, cos PA),

i.e. at 90° + PA counter-clockwise from the +x axis. Rotating the image
counter-clockwise by **90° − PA** (≡ −(90° + PA) modulo 180°, and an axis has no
head or tail) brings it onto the x axis. Pillow's ``Image.rotate(angle)`` turns
counter-clockwise on the screen, so the call is ``rotate(90 − PA)``. In a mirrored,
east-right image the sense of PA flips and the angle is ``PA − 90``. M31
(PA 35°) leans up-left in a standard image and is turned 55° counter-clockwise.

The result may be the galaxy turned by 180° relative to another convention; the
models are trained with rotations and served with a 180° test-time transform, so
that ambiguity is harmless.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from shared.errors import InvalidRequest
from shared.preprocessing import decode_pixels

__all__ = ["encode_png", "orient_cutout", "orient_pixels", "padded_fov_arcmin", "rotation_angle_deg"]

#: Requesting ``√2 ×`` the field leaves no blank corners after any rotation.
PAD_FACTOR = math.sqrt(2.0)


def rotation_angle_deg(pa_deg: float | None, *, east_left: bool = True) -> float:
    """Counter-clockwise on-screen rotation that makes a PA's axis horizontal.

    ``None`` (unknown PA) gives 0: the image is left as it is.
    """
    if pa_deg is None:
        return 0.0
    angle = (90.0 - pa_deg) if east_left else (pa_deg - 90.0)
    return (angle + 180.0) % 360.0 - 180.0


def padded_fov_arcmin(fov_arcmin: float) -> float:
    """The field to request so that the rotated crop of ``fov_arcmin`` has no blank corners."""
    return fov_arcmin * PAD_FACTOR


def _to_rgb8(image: bytes | np.ndarray | Image.Image, max_pixels: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, bytes | bytearray | memoryview):
        # 8-bit sources stay uint8 (no float round trip); FITS and 16-bit give floats.
        array = decode_pixels(bytes(image), max_pixels=max_pixels)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InvalidRequest(f"Expected an (H, W, 3) image array, got shape {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        # decode_pixels gives floats in [0, 1] for FITS and 16-bit; clipped into that range.
        array = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5
        array = array.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def orient_pixels(
    image: bytes | np.ndarray | Image.Image,
    pa_deg: float | None,
    fov_arcmin: float,
    *,
    image_fov_arcmin: float | None = None,
    east_left: bool = True,
    pixels: int | None = None,
    max_pixels: int = 50_000_000,
) -> np.ndarray:
    """Rotate a cutout so the major axis is horizontal and crop it to the field.

    Parameters
    ----------
    image
        Encoded bytes (anything :func:`shared.preprocessing.decode_image` reads, FITS
        included), an ``(H, W, 3)`` array (uint8, or floats in [0, 1]), or a Pillow image.
    pa_deg
        Position angle of the major axis, degrees east of north; ``None`` = no rotation.
    fov_arcmin
        Side of the square field to keep, centred on the image centre.
    image_fov_arcmin
        Angular width of the input image; defaults to ``fov_arcmin`` (nothing cropped
        beyond the image itself). Fetch ``padded_fov_arcmin(fov)`` and pass it here to
        get a crop without blank corners.
    east_left
        ``True`` for the usual north-up, east-left survey orientation.
    pixels
        Resize the square crop to this side; ``None`` keeps the native resolution.
    max_pixels
        Decompression-bomb guard for encoded input.

    Returns
    -------
    numpy.ndarray
        ``(side, side, 3)`` uint8: exactly what the model is given (the worker keeps
        its PNG, :func:`encode_png`, as the job's seen image).

    Raises
    ------
    InvalidRequest
        Non-positive field sizes or an array of the wrong shape.
    InvalidImage, ImageTooLarge, UnsupportedMediaType
        Undecodable input bytes.
    """
    if not fov_arcmin > 0:
        raise InvalidRequest(f"The field of view must be positive, got {fov_arcmin!r} arcmin.")
    if image_fov_arcmin is not None and not image_fov_arcmin > 0:
        raise InvalidRequest(f"The image field must be positive, got {image_fov_arcmin!r}.")
    img = _to_rgb8(image, max_pixels)
    angle = rotation_angle_deg(pa_deg, east_left=east_left)
    if angle:
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    width, height = img.size
    arcmin_per_px = (image_fov_arcmin or fov_arcmin) / width
    side = max(1, min(round(fov_arcmin / arcmin_per_px), width, height))
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if pixels is not None and pixels != side:
        img = img.resize((pixels, pixels), Image.Resampling.LANCZOS)
    return np.asarray(img)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``(H, W, 3)`` image, at the fastest zlib setting.

    Level 1: the PNG is only kept for people to look at; a cutout-sized square stays
    small either way.
    """
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
        out, format="PNG", optimize=False, compress_level=1
    )
    return out.getvalue()


def orient_cutout(
    image: bytes | np.ndarray | Image.Image,
    pa_deg: float | None,
    fov_arcmin: float,
    *,
    image_fov_arcmin: float | None = None,
    east_left: bool = True,
    pixels: int | None = None,
    max_pixels: int = 50_000_000,
) -> bytes:
    """:func:`orient_pixels` as a PNG (parameters and errors the same)."""
    return encode_png(
        orient_pixels(
            image,
            pa_deg,
            fov_arcmin,
            image_fov_arcmin=image_fov_arcmin,
            east_left=east_left,
            pixels=pixels,
            max_pixels=max_pixels,
        )
    )
