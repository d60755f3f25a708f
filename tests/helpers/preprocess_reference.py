"""The preprocessing as it was before issue 11, kept verbatim as a reference.

Tests pin that today's :func:`shared.preprocessing.preprocess` gives the same arrays
within a stated tolerance, and ``bench/preprocess.py`` times it as the baseline. It
decodes every image to float32 ``(H, W, 3)`` first (JPEG at full resolution) and
resizes the three float channels one by one. Only the header checks, the non-finite
guard and the FITS stretch are borrowed from the live module (they did not change);
the FITS vertical flip of issue 11 is *not* applied here.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from shared.errors import ImageTooLarge, InvalidImage
from shared.preprocessing import (
    _asinh_stretch,
    _axis_plan,
    _finite,
    _fits_image_hdu,
    _is_fits,
    _open_pillow,
)
from shared.registry import InputSpec

__all__ = ["reference_decode_image", "reference_preprocess", "reference_to_model_input"]


def _fits_array(data: bytes, max_pixels: int) -> np.ndarray:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                hdu = _fits_image_hdu(hdul, len(data), max_pixels)
                array = np.asarray(hdu.data, dtype=np.float32)
    except (InvalidImage, ImageTooLarge):
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise InvalidImage(f"The FITS file cannot be read: {exc}") from exc
    if array.ndim == 3 and array.shape[0] == 3:
        array = np.moveaxis(array, 0, -1)
    elif array.ndim >= 3:
        array = array.reshape((-1,) + array.shape[-2:])[0]
    out = _asinh_stretch(array)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=-1)


def _grey(plane: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(plane, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


def _pillow_array(img: Image.Image) -> np.ndarray:
    img.seek(0)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"The image data is corrupt or truncated: {exc}") from exc
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _grey(np.asarray(img, dtype=np.float32) / 65535.0)
    if mode in ("I", "F"):
        values = _finite(np.asarray(img, dtype=np.float64), "image")
        lo, hi = float(values.min()), float(values.max())
        return _grey((values - lo) / (hi - lo) if hi > lo else np.zeros_like(values))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    elif img.mode in ("1", "L"):
        return _grey(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.float32)
    array /= 255.0
    return array


def reference_decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """The old ``decode_image``: float32 ``(H, W, 3)`` in [0, 1], full resolution."""
    if _is_fits(data):
        return _fits_array(data, max_pixels)
    return _pillow_array(_open_pillow(data, max_pixels))


def reference_to_model_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The old ``to_model_input``: three float channels resized one at a time."""
    if not np.isfinite(image).all():
        raise InvalidImage("The image holds NaN or infinite pixel values.")
    height, width = image.shape[:2]
    side, size = max(height, width), spec.size
    rows = _axis_plan(height, side, size)
    cols = _axis_plan(width, side, size)
    out = np.zeros((size, size, 3), dtype=np.float32)
    if side == size:
        out[rows.pad_before : rows.pad_before + height, cols.pad_before : cols.pad_before + width] = image
    else:
        strip_h = rows.margin_before + height + rows.margin_after
        strip_w = cols.margin_before + width + cols.margin_after
        box = (cols.box[0], rows.box[0], cols.box[1], rows.box[1])
        out_size = (cols.out[1] - cols.out[0], rows.out[1] - rows.out[0])
        for c in range(3):
            strip = np.zeros((strip_h, strip_w), dtype=np.float32)
            strip[rows.margin_before : rows.margin_before + height,
                  cols.margin_before : cols.margin_before + width] = image[..., c]
            resized = Image.fromarray(strip).resize(out_size, Image.Resampling.BILINEAR, box=box)
            out[rows.out[0] : rows.out[1], cols.out[0] : cols.out[1], c] = np.asarray(resized)
    if spec.channels == 1:
        out = out.mean(axis=-1, keepdims=True)
    out = np.clip(out, 0.0, 1.0)
    if spec.scaling == "symmetric":
        out = out * 2.0 - 1.0
    return out.astype(np.float32, copy=False)


def reference_preprocess(data: bytes, spec: InputSpec, *, max_pixels: int = 50_000_000) -> np.ndarray:
    """The old ``preprocess``: full decode to float, then the float resize."""
    return reference_to_model_input(reference_decode_image(data, max_pixels=max_pixels), spec)
