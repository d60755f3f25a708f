"""The one preprocessing path: every format, every mode, and every way to break it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from shared.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from shared.preprocessing import decode_image, inspect_image, preprocess, to_model_input, tta_transform
from shared.registry import InputSpec
from tests.helpers.images import bomb_png, ellipse, encode, truncated_png

LIMIT = 10_000_000


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_png_round_trips_exactly() -> None:
    arr = ellipse(32)
    out = decode_image(encode(arr), max_pixels=LIMIT)
    assert out.dtype == np.float32 and out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "mode", ["L", "P", "RGBA", "LA", "I;16", "I", "F", "1", "CMYK"]
)
def test_every_pillow_mode_becomes_three_channels_in_unit_range(mode: str) -> None:
    base = Image.fromarray(ellipse(24))
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    elif mode in ("I", "F"):
        img = base.convert("L").convert(mode)
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    out = decode_image(_save(img, fmt), max_pixels=LIMIT)
    assert out.shape == (24, 24, 3)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out.max() > 0.5  # the bright centre survived


def test_transparent_corners_become_black_sky() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent…
    rgba[4:6, 4:6, 3] = 255  # …except the middle
    out = decode_image(encode(rgba), max_pixels=LIMIT)
    assert out[0, 0].max() == 0.0 and out[5, 5].min() == 1.0


def test_gif_takes_the_first_frame() -> None:
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (200, 10)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert out.mean() > 0.6


def test_jpeg_and_webp_decode() -> None:
    for fmt in ("JPEG", "WEBP", "BMP"):
        out = decode_image(encode(ellipse(40), fmt), max_pixels=LIMIT)
        assert out.shape == (40, 40, 3), fmt


def test_fits_image_and_cube_are_asinh_stretched() -> None:
    plane = ellipse(32)[..., 0].astype(np.float32) * 1000.0 + 50.0
    plane[0, 0] = np.nan
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(plane)]).writeto(buf)
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert out.shape == (32, 32, 3) and np.isfinite(out).all()
    assert out[16, 16, 0] > 0.8 and out[2, 2, 0] < 0.3
    assert inspect_image(buf.getvalue(), max_pixels=LIMIT).format == "FITS"
    cube = np.stack([plane, plane * 0.5, plane * 0.25])
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube)]).writeto(buf)
    assert decode_image(buf.getvalue(), max_pixels=LIMIT).shape == (32, 32, 3)


def test_broken_inputs_raise_readable_errors() -> None:
    with pytest.raises(InvalidImage, match="truncated|corrupt"):
        decode_image(truncated_png(), max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge):
        inspect_image(bomb_png(), max_pixels=LIMIT)
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"%PDF-1.7 not an image", max_pixels=LIMIT)
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", max_pixels=LIMIT)
    with pytest.raises(InvalidImage):
        decode_image(b"SIMPLE  =                    T" + b" " * 50, max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge):
        decode_image(encode(ellipse(64)), max_pixels=1000)


def test_padding_keeps_the_aspect_ratio() -> None:
    # A 2:1 white rectangle must stay 2:1 after padding and resizing, never stretched.
    img = np.ones((20, 40, 3), np.float32)
    out = to_model_input(img, InputSpec(size=16))
    rows = np.where(out[..., 0].max(axis=1) > 0.5)[0]
    cols = np.where(out[..., 0].max(axis=0) > 0.5)[0]
    assert len(cols) == 16 and 7 <= len(rows) <= 9


def test_channels_and_scaling_follow_the_spec() -> None:
    img = decode_image(encode(ellipse(32)), max_pixels=LIMIT)
    grey = to_model_input(img, InputSpec(size=8, channels=1, scaling="symmetric"))
    assert grey.shape == (8, 8, 1) and grey.min() >= -1.0 and grey.min() < 0.0


def test_preprocess_is_decode_then_to_model_input() -> None:
    data = encode(ellipse(50, axis_ratio=0.3))
    spec = InputSpec(size=24)
    np.testing.assert_array_equal(
        preprocess(data, spec), to_model_input(decode_image(data, max_pixels=LIMIT), spec)
    )


def test_tta_rot180_twice_is_identity() -> None:
    batch = np.random.default_rng(0).random((2, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(tta_transform(tta_transform(batch, "rot180"), "rot180"), batch)
    assert tta_transform(batch, "rot180")[0, 0, 0, 0] == batch[0, -1, -1, 0]
    with pytest.raises(ValueError):
        tta_transform(batch, "shear")
