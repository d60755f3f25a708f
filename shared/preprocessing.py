"""The one path from raw image bytes to a model input array.

Both the trainer and the worker call :func:`preprocess`, so what a model sees in
training is by construction what it sees when serving. Formats: PNG, JPEG, GIF,
TIFF, WebP, BMP (via Pillow) and FITS (via astropy, asinh-stretched).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from shared.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from shared.registry import InputSpec

__all__ = [
    "ImageInfo",
    "PILLOW_FORMATS",
    "inspect_image",
    "decode_image",
    "to_model_input",
    "preprocess",
    "tta_transform",
    "TTA_TRANSFORMS",
]

PILLOW_FORMATS = frozenset({"PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"})
_FITS_MAGIC = b"SIMPLE  ="
# Truncated files must fail loudly, never be half-filled with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, before any pixel is decoded."""

    format: str
    width: int
    height: int
    mode: str
    frames: int = 1


def _is_fits(data: bytes) -> bool:
    return data[: len(_FITS_MAGIC)] == _FITS_MAGIC


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"The image claims a size of {width}x{height} pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Send a smaller cutout.",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )


def _open_pillow(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("The file is empty.")
    with warnings.catch_warnings():
        # Pillow warns, then errors, on bombs; we want our own limit to decide, loudly.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"The image looks like a decompression bomb: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(
                "The file is not an image skyserve can read. Send PNG, JPEG, GIF, TIFF, "
                "WebP, BMP or FITS."
            ) from exc
        except OSError as exc:
            raise InvalidImage(f"The image header cannot be read: {exc}") from exc
    if img.format not in PILLOW_FORMATS:
        raise UnsupportedMediaType(
            f"{img.format} images are not accepted. Send PNG, JPEG, GIF, TIFF, WebP, BMP or FITS."
        )
    _check_pixels(img.width, img.height, max_pixels)
    return img


def _fits_array(data: bytes, max_pixels: int) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
            for hdu in hdul:
                shape = getattr(hdu, "shape", None) or ()
                if len(shape) >= 2:
                    _check_pixels(int(shape[-1]), int(shape[-2]), max_pixels)
                    array = np.asarray(hdu.data, dtype=np.float32)
                    break
            else:
                raise InvalidImage("The FITS file has no HDU with a 2-D image.")
    except InvalidImage:
        raise
    except ImageTooLarge:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InvalidImage(f"The FITS file cannot be read: {exc}") from exc
    if array.ndim == 3 and array.shape[0] == 3:
        array = np.moveaxis(array, 0, -1)  # a g/r/i cube becomes RGB
    elif array.ndim >= 3:
        array = array.reshape((-1,) + array.shape[-2:])[0]
    return _asinh_stretch(array)


def _asinh_stretch(array: np.ndarray) -> np.ndarray:
    """Map raw fluxes to [0, 1] with a percentile interval and an asinh stretch.

    The interval and stretch objects are used directly: ``ImageNormalize`` needs
    matplotlib, which only the trainer installs, and the worker must decode FITS too.
    """
    from astropy.visualization.interval import PercentileInterval
    from astropy.visualization.stretch import AsinhStretch

    finite = np.isfinite(array)
    if not finite.any():
        raise InvalidImage("The FITS image holds no finite pixel values.")
    array = np.where(finite, array, np.nanmin(np.where(finite, array, np.inf)))
    vmin, vmax = PercentileInterval(99.5).get_limits(array)
    span = float(vmax - vmin)
    scaled = (array - vmin) / span if span > 0 else np.zeros_like(array)
    stretched = AsinhStretch(0.1)(np.clip(scaled, 0.0, 1.0), clip=True)
    out = np.clip(np.asarray(stretched, dtype=np.float32), 0.0, 1.0)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=-1)


def _pillow_array(img: Image.Image) -> np.ndarray:
    img.seek(0)  # first frame of GIF/TIFF stacks
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"The image data is corrupt or truncated: {exc}") from exc
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _grey(np.asarray(img, dtype=np.float32) / 65535.0)
    if mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        return _grey((values - lo) / (hi - lo) if hi > lo else np.zeros_like(values))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Transparent (masked) corners are sky: composite onto black, not white.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    elif img.mode in ("1", "L"):
        return _grey(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _grey(plane: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(plane, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read only the header: format, size, mode. Cheap enough for the API to call.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    if _is_fits(data):
        from astropy.io import fits

        try:
            header = fits.getheader(io.BytesIO(data))
        except (OSError, ValueError) as exc:
            raise InvalidImage(f"The FITS header cannot be read: {exc}") from exc
        naxis = int(header.get("NAXIS", 0))
        width, height = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))
        if naxis >= 2:
            _check_pixels(width, height, max_pixels)
        return ImageInfo("FITS", width, height, f"BITPIX={header.get('BITPIX')}")
    img = _open_pillow(data, max_pixels)
    return ImageInfo(img.format or "?", img.width, img.height, img.mode, getattr(img, "n_frames", 1))


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode any supported image into a float32 ``(H, W, 3)`` array in [0, 1].

    Greyscale becomes three equal channels; palette, alpha, 16-bit and float modes
    are normalised; animated/multi-page files give their first frame.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    if _is_fits(data):
        return _fits_array(data, max_pixels)
    return _pillow_array(_open_pillow(data, max_pixels))


def to_model_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pad to square (never stretch: inclination lives in the ellipticity) and resize.

    Parameters
    ----------
    image
        ``(H, W, 3)`` float32 in [0, 1], as :func:`decode_image` returns.
    spec
        The model's input spec.

    Returns
    -------
    numpy.ndarray
        ``(size, size, channels)`` float32, scaled as the spec says.
    """
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = image
    if side != spec.size:
        # Pillow's resampling filters widen their support when shrinking: it antialiases.
        square = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(square[..., c])).resize(
                        (spec.size, spec.size), Image.Resampling.BILINEAR
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        )
    if spec.channels == 1:
        square = square.mean(axis=-1, keepdims=True)
    square = np.clip(square, 0.0, 1.0)
    if spec.scaling == "symmetric":
        square = square * 2.0 - 1.0
    return square.astype(np.float32, copy=False)


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int = 50_000_000) -> np.ndarray:
    """Raw bytes → model input. The single function training and serving share."""
    return to_model_input(decode_image(data, max_pixels=max_pixels), spec)


# Exact symmetries of a square on (N, H, W, C) batches: no resampling, label-preserving
# for every task whose answer does not depend on orientation.
_TTA: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda batch: batch,
    "rot180": lambda batch: batch[:, ::-1, ::-1, :],
    "flip_lr": lambda batch: batch[:, :, ::-1, :],
    "flip_ud": lambda batch: batch[:, ::-1, :, :],
    "rot90": lambda batch: np.rot90(batch, k=1, axes=(1, 2)),
    "rot270": lambda batch: np.rot90(batch, k=3, axes=(1, 2)),
}
#: The test-time transforms :func:`tta_transform` knows.
TTA_TRANSFORMS: tuple[str, ...] = tuple(_TTA)


def tta_transform(batch: np.ndarray, name: str) -> np.ndarray:
    """Apply a test-time transform to an ``(N, H, W, C)`` batch."""
    try:
        return _TTA[name](batch)
    except KeyError:
        raise ValueError(f"unknown test-time transform {name!r}") from None
