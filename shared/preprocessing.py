"""The one path from raw image bytes to a model input array.

Both the trainer and the worker call :func:`preprocess`, so what a model sees in
training is by construction what it sees when serving. Formats: PNG, JPEG, GIF,
TIFF, WebP, BMP (via Pillow) and FITS (via astropy, asinh-stretched).

Hostile input is handled here, on purpose, once:

- **Non-finite pixels** (NaN, ±inf in float TIFFs and FITS: masked or blank pixels)
  are *replaced* by the image's lowest finite value, i.e. treated as empty sky, so
  a partly masked survey image still gets an answer; an image with no finite pixel
  at all is refused (:class:`InvalidImage`). Nothing non-finite ever reaches a model.
- **Shape**: besides the pixel limit (a decompression-bomb guard), an image whose
  long side is more than :data:`MAX_ASPECT_RATIO` times its short side is refused,
  and every axis of a FITS array is checked (and the data it declares must be in
  the file), all from the header, before any pixel is decoded.
- **Work bounded by the output**: :func:`to_model_input` never builds the padded
  square at full resolution; it resizes only the strip that holds the image (plus
  the filter's reach into the padding) straight into the model-sized square, which
  gives the same array as pad-then-resize (to float rounding) at a cost bounded by
  the decoded image and the model's input size.

Cheap by construction (issue 11):

- **8-bit stays 8-bit.** An 8-bit image (most PNG, JPEG, GIF, BMP, WebP, TIFF) is
  decoded to ``uint8`` and resized by Pillow in its 8-bit mode, in one call for all
  channels (one for greyscale), then scaled to float at the model's size. Against
  resizing three float32 channels this rounds each output value to 1/255 (at most
  0.002 off on the [0, 1] scale); 16-bit, float and FITS images keep the float path.
- **JPEG draft mode.** A JPEG is decoded at 1/2, 1/4 or 1/8 scale by the DCT itself
  when that leaves its long side at least :func:`decode_side` of the model's size
  (six times the size, and never under :data:`DRAFT_MIN_SIDE`): within 0.01 of a full
  decode on the [0, 1] scale, at a fraction of its cost.
- **Decoded once.** :class:`DecodedImage` keeps the decoded pixels of one image for
  every model input (and the page's seen image) made from it; :func:`preprocess` is
  one :class:`DecodedImage` asked for one spec, so a worker that asks it for four
  tasks gets exactly what four :func:`preprocess` calls give.
- **FITS north up.** FITS stores its first row at the bottom; it is flipped so row 0
  is the top, as every FITS viewer shows it (north up for a survey cutout).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from shared.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from shared.registry import InputSpec

__all__ = [
    "DRAFT_MIN_SIDE",
    "MAX_ASPECT_RATIO",
    "PILLOW_FORMATS",
    "TTA_TRANSFORMS",
    "DecodedImage",
    "ImageInfo",
    "decode_image",
    "decode_pixels",
    "decode_side",
    "inspect_image",
    "preprocess",
    "to_model_input",
    "tta_transform",
]

PILLOW_FORMATS = frozenset({"PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"})
_FITS_MAGIC = b"SIMPLE  ="
#: Longest side over shortest side accepted. Past 20:1 the padded square of a 128 px
#: model input holds a strip under 7 px tall: nothing a model can read, while the
#: work to pad such an image grows with the square of its long side.
MAX_ASPECT_RATIO = 20.0
#: Planes a FITS array may hold beyond its image plane (a g/r/i cube has 3).
_FITS_MAX_PLANES = 3
#: A JPEG's draft decode keeps at least this long a side, whatever the model's size: a
#: 64 px model's decode then also gives the page's 256 px seen image without a second one.
DRAFT_MIN_SIDE = 256
#: ... and at least this many times the model's input side. The DCT's 1/4 and 1/8 scales
#: average blocks of pixels, a coarser filter than the bilinear resize that follows: a
#: 1024 px JPEG drafted to 256 px for a 64 px input moved star peaks by up to 0.03 (on
#: [0, 1]), drafted to 512 px by 0.003, about the 8-bit rounding (tests/shared/
#: test_preprocessing_tolerance.py pins the bound).
DRAFT_FACTOR = 6
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
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InvalidImage(
            f"The image is {width}x{height} pixels, {ratio:,.0f} times longer than it is "
            f"wide; the limit is {MAX_ASPECT_RATIO:g}:1. Crop it around the object.",
            width=width,
            height=height,
            max_aspect_ratio=MAX_ASPECT_RATIO,
        )


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    """Replace NaN/±inf by the lowest finite value (empty sky); refuse all-non-finite."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        raise InvalidImage(
            f"The {what} holds no finite pixel value (all NaN or infinite); send real pixels."
        )
    return np.where(finite, values, values[finite].min()).astype(values.dtype, copy=False)


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


def _fits_image_hdu(hdul: Any, data_bytes: int, max_pixels: int) -> Any:
    """The first HDU holding an image, with every axis checked from its header.

    Its last two axes are the image (width, height: pixel limit and aspect ratio);
    any axes before them may hold at most :data:`_FITS_MAX_PLANES` planes in all,
    and the pixel data the header declares must fit in the file (a 64x64x2,000,000
    cube declared in a few kB is refused here, before anything is allocated).
    """
    for hdu in hdul:
        header = hdu.header
        if header.get("XTENSION", "IMAGE").strip() not in ("IMAGE", "BINTABLE"):
            continue
        shape = tuple(int(n) for n in (getattr(hdu, "shape", None) or ()))
        if len(shape) < 2:
            continue
        if any(n <= 0 for n in shape):
            raise InvalidImage(f"The FITS image declares an empty axis: shape {shape}.")
        planes = math.prod(shape[:-2])
        _check_pixels(shape[-1], shape[-2], max_pixels)
        if planes > _FITS_MAX_PLANES:
            raise InvalidImage(
                f"The FITS array has shape {shape}: {planes:,} image planes. skyserve reads one "
                f"plane, or {_FITS_MAX_PLANES} as colour channels; send the plane to use.",
                shape=list(shape),
            )
        compressed = type(hdu).__name__ == "CompImageHDU"
        declared = math.prod(shape) * abs(int(header.get("BITPIX", 8))) // 8
        if not compressed and declared > data_bytes:
            raise InvalidImage(
                f"The FITS header declares {declared:,} bytes of pixels (shape {shape}) but the "
                f"file holds only {data_bytes:,} bytes: it is truncated or its header is wrong.",
            )
        return hdu
    raise InvalidImage(
        "The FITS file has no HDU with a 2-D image (1-D data and tables are not images)."
    )


def _fits_array(data: bytes, max_pixels: int) -> np.ndarray:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns on odd headers; errors decide
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                hdu = _fits_image_hdu(hdul, len(data), max_pixels)
                array = np.asarray(hdu.data, dtype=np.float32)
    except (InvalidImage, ImageTooLarge):
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise InvalidImage(f"The FITS file cannot be read: {exc}") from exc
    if array.ndim >= 3 and not (array.ndim == 3 and array.shape[0] == 3):
        array = array.reshape((-1,) + array.shape[-2:])[0]
    # FITS counts rows from the bottom (row 1 is the lowest on screen in every viewer,
    # north up in a survey cutout); numpy's row 0 is the top, so flip the rows.
    array = array[..., ::-1, :]
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # a g/r/i cube becomes RGB
    return _asinh_stretch(np.ascontiguousarray(array))


def _asinh_stretch(array: np.ndarray) -> np.ndarray:
    """Map raw fluxes to [0, 1] with a percentile interval and an asinh stretch.

    The interval and the stretch are applied directly (not through
    ``ImageNormalize``, which needs matplotlib): the serving extras do not have it.
    """
    from astropy.visualization import AsinhStretch, PercentileInterval

    array = _finite(array, "FITS image")
    vmin, vmax = PercentileInterval(99.5).get_limits(array)
    scaled = (array - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(array)
    # asinh maps [0, 1] onto [0, 1] monotonically, so clipping first changes nothing.
    # One plane stays one plane (a grey image): to_model_input resizes it once.
    return AsinhStretch(0.1)(np.clip(scaled, 0.0, 1.0), clip=True).astype(np.float32)


def _draft(img: Image.Image, min_side: int | None) -> bool:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while its long side stays ≥ ``min_side``.

    Returns whether the decode depends on ``min_side`` at all (only JPEG's does).
    """
    if img.format != "JPEG":
        return False
    if min_side is not None and img.mode in ("RGB", "L"):
        long_side = max(img.width, img.height)
        if long_side >= 2 * min_side:
            scale = min_side / long_side
            # Pillow picks the largest reduction whose result still covers this size.
            img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    return True


def _pillow_pixels(img: Image.Image) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` for 8-bit images, float32 in [0, 1] otherwise."""
    img.seek(0)  # first frame of GIF/TIFF stacks
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"The image data is corrupt or truncated: {exc}") from exc
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if mode in ("I", "F"):
        # float64: the span of two extreme float32 values (-3e38 .. 3e38) overflows float32.
        values = _finite(np.asarray(img, dtype=np.float64), "image")
        lo, hi = float(values.min()), float(values.max())
        plane = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        return np.clip(plane, 0.0, 1.0).astype(np.float32)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Transparent (masked) corners are sky: composite onto black, not white.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    elif img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _float_rgb(pixels: np.ndarray) -> np.ndarray:
    """float32 ``(H, W, 3)`` in [0, 1] from what :func:`decode_pixels` gives."""
    if pixels.dtype == np.uint8:
        array = pixels.astype(np.float32)
        array /= 255.0  # in place: one float copy of the image, not two
    else:
        array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read only the header: format, size, mode. Cheap enough for the API to call.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    if _is_fits(data):
        from astropy.io import fits

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                    hdu = _fits_image_hdu(hdul, len(data), max_pixels)
                    shape, bitpix = hdu.shape, hdu.header.get("BITPIX")
        except (InvalidImage, ImageTooLarge):
            raise
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise InvalidImage(f"The FITS header cannot be read: {exc}") from exc
        return ImageInfo("FITS", int(shape[-1]), int(shape[-2]), f"BITPIX={bitpix}")
    img = _open_pillow(data, max_pixels)
    return ImageInfo(img.format or "?", img.width, img.height, img.mode, getattr(img, "n_frames", 1))


def decode_side(size: int) -> int:
    """The shortest long side a JPEG may be decoded at for a ``size``-pixel model input."""
    return max(DRAFT_FACTOR * size, DRAFT_MIN_SIDE)


def _decode(data: bytes, max_pixels: int, min_side: int | None) -> tuple[np.ndarray, bool, bool]:
    """The pixels; whether another ``min_side`` could have given other pixels; whether
    they are the full resolution."""
    if _is_fits(data):
        return _fits_array(data, max_pixels), False, True
    img = _open_pillow(data, max_pixels)
    size = img.size
    depends = _draft(img, min_side)
    return _pillow_pixels(img), depends, img.size == size


def decode_pixels(data: bytes, *, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """Decode any supported image as cheaply as its use allows.

    Parameters
    ----------
    data
        The encoded image: PNG, JPEG, GIF, TIFF, WebP, BMP or FITS.
    max_pixels
        Decompression-bomb guard.
    min_side
        The long side the caller needs (see :func:`decode_side`): a JPEG may be
        decoded at 1/2, 1/4 or 1/8 scale as long as its long side stays at least
        this. ``None`` decodes at full resolution.

    Returns
    -------
    numpy.ndarray
        ``uint8`` for 8-bit images, float32 in [0, 1] for 16-bit, float and FITS
        ones; ``(H, W)`` for greyscale, ``(H, W, 3)`` for colour. Always finite.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    return _decode(data, max_pixels, min_side)[0]


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode any supported image into a float32 ``(H, W, 3)`` array in [0, 1].

    Greyscale becomes three equal channels; palette, alpha, 16-bit and float modes
    are normalised; animated/multi-page files give their first frame; FITS is
    stretched and flipped north up. Full resolution (no draft): for a model input,
    :func:`preprocess` is cheaper.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    return _float_rgb(decode_pixels(data, max_pixels=max_pixels))


class DecodedImage:
    """One image decoded at most once for every model input made from it.

    A worker makes one per image and asks it for each task's input and for the seen
    image; :func:`preprocess` makes one and asks it for one spec, so both give the
    same arrays by construction.

    Parameters
    ----------
    source
        Encoded bytes, or pixels already decoded (``uint8`` or float32 in [0, 1],
        ``(H, W)`` or ``(H, W, 3)``, e.g. a rotated survey cutout).
    max_pixels
        Decompression-bomb guard for bytes.
    """

    def __init__(self, source: bytes | np.ndarray, *, max_pixels: int = 50_000_000) -> None:
        self._data: bytes | None = None
        self._max_pixels = max_pixels
        # The min_side asked for → (pixels, full resolution?); the key None means "the
        # same for every min_side" (anything but a JPEG, or pixels given).
        self._decoded: dict[int | None, tuple[np.ndarray, bool]] = {}
        if isinstance(source, np.ndarray):
            self._decoded[None] = (source, True)
        else:
            self._data = bytes(source)

    def _get(self, min_side: int) -> np.ndarray:
        if None in self._decoded:
            return self._decoded[None][0]
        if min_side not in self._decoded:
            assert self._data is not None
            pixels, depends, full = _decode(self._data, self._max_pixels, min_side)
            self._decoded[min_side if depends else None] = (pixels, full)
            return pixels
        return self._decoded[min_side][0]

    def pixels(self, size: int) -> np.ndarray:
        """The decoded pixels for a ``size``-pixel model input (see :func:`decode_pixels`).

        Raises
        ------
        InvalidImage, ImageTooLarge, UnsupportedMediaType
            On the first call that decodes.
        """
        return self._get(decode_side(size))

    def pixels_covering(self, side: int) -> np.ndarray:
        """Pixels at least ``side`` long (or the whole image), for a picture people look at.

        Any decode already made that is large enough serves (the page's 256 px seen
        image comes from the models' decode); otherwise a JPEG is decoded again, drafted
        to ``side``.
        """
        for pixels, full in self._decoded.values():
            if full or max(pixels.shape[:2]) >= side:
                return pixels
        return self._get(side)

    def model_input(self, spec: InputSpec) -> np.ndarray:
        """What ``spec``'s model takes: :func:`to_model_input` of :meth:`pixels`."""
        return to_model_input(self.pixels(spec.size), spec)


def to_model_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pad to square (never stretch: inclination lives in the ellipticity) and resize.

    The result is what padding the image with black to a square and resizing that
    square (bilinear, antialiased when shrinking) gives, but the square is never
    built: only the strip holding the image, plus the filter's reach into the
    padding, is resized, straight into its rows (or columns) of the output. Work
    and memory are bounded by the image and ``spec.size``, not by the square of the
    image's long side. A ``uint8`` image is resized in Pillow's 8-bit mode (all
    channels in one call) and scaled to [0, 1] after; a float one channel by channel.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, 3)``: ``uint8``, or float in [0, 1], as
        :func:`decode_pixels` and :func:`decode_image` return.
    spec
        The model's input spec.

    Returns
    -------
    numpy.ndarray
        ``(size, size, channels)`` float32, scaled as the spec says.

    Raises
    ------
    InvalidImage
        If a float array holds a non-finite value (the decoders never give one).
    """
    eight_bit = image.dtype == np.uint8
    if not eight_bit:
        image = np.asarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            raise InvalidImage("The image holds NaN or infinite pixel values.")
    grey = image.ndim == 2
    planes = 1 if grey else 3
    height, width = image.shape[:2]
    side, size = max(height, width), spec.size
    rows = _axis_plan(height, side, size)
    cols = _axis_plan(width, side, size)
    out = np.zeros((size, size, planes), dtype=np.float32)
    if side == size:  # nothing to resize: just centre it in the square
        block = image if not grey else image[..., None]
        out[rows.pad_before : rows.pad_before + height,
            cols.pad_before : cols.pad_before + width] = block
        if eight_bit:
            out /= 255.0
    else:
        strip_h = rows.margin_before + height + rows.margin_after
        strip_w = cols.margin_before + width + cols.margin_after
        box = (cols.box[0], rows.box[0], cols.box[1], rows.box[1])
        out_size = (cols.out[1] - cols.out[0], rows.out[1] - rows.out[0])
        target = out[rows.out[0] : rows.out[1], cols.out[0] : cols.out[1]]
        inside = (slice(rows.margin_before, rows.margin_before + height),
                  slice(cols.margin_before, cols.margin_before + width))
        if eight_bit:
            # One 8-bit resample for every channel; no padding copy when nothing is padded.
            strip = image
            if (strip_h, strip_w) != (height, width):
                strip = np.zeros((strip_h, strip_w) + image.shape[2:], dtype=np.uint8)
                strip[inside] = image
            resized = np.asarray(
                Image.fromarray(np.ascontiguousarray(strip), "L" if grey else "RGB").resize(
                    out_size, Image.Resampling.BILINEAR, box=box
                )
            )
            target[...] = resized.reshape(resized.shape[:2] + (planes,))
            target /= 255.0
        else:
            for c in range(planes):
                # One channel at a time, in Pillow's float mode: the padded strip is the
                # only full-resolution copy made.
                strip = np.zeros((strip_h, strip_w), dtype=np.float32)
                strip[inside] = image if grey else image[..., c]
                # Pillow's resampling filters widen their support when shrinking: it antialiases.
                resized = Image.fromarray(strip).resize(out_size, Image.Resampling.BILINEAR, box=box)
                target[..., c] = np.asarray(resized)
    if spec.channels == 1:
        out = out.mean(axis=-1, keepdims=True)
    elif grey:
        out = np.repeat(out, 3, axis=-1)
    out = np.clip(out, 0.0, 1.0)
    if spec.scaling == "symmetric":
        out = out * 2.0 - 1.0
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis of the image maps into the output square."""

    pad_before: int  # black pixels before the image in the full-resolution square
    margin_before: int  # of those, how many the resized strip carries
    margin_after: int
    out: tuple[int, int]  # output pixels [start, stop) the image can reach
    box: tuple[float, float]  # the source interval (strip coordinates) they cover


def _axis_plan(length: int, side: int, size: int) -> _AxisPlan:
    """Plan one axis: which output pixels can see the image, and from which source span.

    Pillow's bilinear filter (support 1, widened by the shrink factor) centres output
    pixel ``i`` at ``(i + 0.5) * scale`` in the square and reads the source pixels
    within its support. Output pixels whose support misses the image are black; the
    others read the image plus at most ``support + 1`` pixels of padding on each side.
    The strip keeps twice that margin (or the whole padding when it is smaller), so
    every tap — and where the square ends, every clipping of the filter — falls
    exactly where it would in the full square.
    """
    pad_before = (side - length) // 2
    pad_after = side - length - pad_before
    scale = side / size
    support = max(scale, 1.0)  # bilinear support 1.0, times the filter scale
    reach = 2.0 * support + scale + 2.0
    if pad_before == 0 and pad_after == 0:
        return _AxisPlan(0, 0, 0, (0, size), (0.0, float(side)))
    first = max(0, math.floor((pad_before - support - 1.0) / scale - 0.5))
    stop = min(size, math.ceil((pad_before + length + support + 1.0) / scale - 0.5) + 1)
    margin_before = min(pad_before, math.ceil(reach))
    margin_after = min(pad_after, math.ceil(reach))
    shift = pad_before - margin_before  # square coordinate of the strip's first pixel
    box = (first * scale - shift, stop * scale - shift)
    strip = margin_before + length + margin_after
    # Float rounding must not push the box past the strip (Pillow refuses that).
    return _AxisPlan(
        pad_before, margin_before, margin_after, (first, stop),
        (max(box[0], 0.0), min(box[1], float(strip))),
    )


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int = 50_000_000) -> np.ndarray:
    """Raw bytes → model input. The single function training and serving share.

    It is :meth:`DecodedImage.model_input`: a JPEG decoded in draft mode down to
    :func:`decode_side` of ``spec.size``, 8-bit images resized as 8-bit.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
    """
    return DecodedImage(data, max_pixels=max_pixels).model_input(spec)


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
