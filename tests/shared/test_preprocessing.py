"""The one preprocessing path: every format, every mode, and every way to break it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from shared.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from shared.preprocessing import (
    decode_image,
    decode_pixels,
    decode_side,
    inspect_image,
    preprocess,
    to_model_input,
    tta_transform,
)
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
    pixels = decode_pixels(data, max_pixels=LIMIT, min_side=decode_side(spec.size))
    assert pixels.dtype == np.uint8  # an 8-bit PNG stays 8-bit until it is model-sized
    np.testing.assert_array_equal(preprocess(data, spec), to_model_input(pixels, spec))
    # The float image decode_image gives resizes to the same array within 8-bit rounding.
    np.testing.assert_allclose(
        preprocess(data, spec), to_model_input(decode_image(data, max_pixels=LIMIT), spec),
        atol=1.0 / 255.0,
    )


def test_tta_rot180_twice_is_identity() -> None:
    batch = np.random.default_rng(0).random((2, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(tta_transform(tta_transform(batch, "rot180"), "rot180"), batch)
    assert tta_transform(batch, "rot180")[0, 0, 0, 0] == batch[0, -1, -1, 0]
    with pytest.raises(ValueError):
        tta_transform(batch, "shear")


# --------------------------------------------------------------------------- issue 8: hostile shapes


def _reference_to_model_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The pre-issue-8 algorithm, kept verbatim as the reference: pad to a full-resolution
    square first, then resize. Its cost grows with the square of the long side."""
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = image
    if side != spec.size:
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


def _real_images() -> list[tuple[str, np.ndarray]]:
    """Real pictures: the committed evaluation plots (non-square), and crops of real
    deep-sky photos from stellarium-data where it is installed."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = [(p.name, p.read_bytes()) for p in sorted(root.glob("models/*/2/*.png"))[:4]]
    photos = sorted(Path("/usr/share/stellarium/nebulae/default").glob("*.png"))[:3]
    images = [(name, decode_image(data, max_pixels=LIMIT)) for name, data in found]
    for path in photos:
        full = decode_image(path.read_bytes(), max_pixels=LIMIT)
        h, w = full.shape[:2]
        images += [(path.name, full), (path.name + " crop", full[: h // 3, :])]
    assert len(images) >= 4, "the committed model plots are missing"
    return images


@pytest.mark.parametrize("spec", [InputSpec(size=128), InputSpec(size=64, channels=1, scaling="symmetric")])
def test_bounded_resize_matches_pad_then_resize_on_real_images(spec: InputSpec) -> None:
    for name, image in _real_images():
        expected = _reference_to_model_input(image, spec)
        got = to_model_input(image, spec)
        assert got.shape == expected.shape, name
        # Same filter taps, same weights: only float rounding differs.
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=name)


def test_bounded_resize_matches_pad_then_resize_on_any_shape() -> None:
    rng = np.random.default_rng(8)
    for _ in range(60):
        h, w = (int(n) for n in rng.integers(1, 300, size=2))
        if max(h, w) / min(h, w) > 20:
            continue
        spec = InputSpec(size=int(rng.choice([16, 64, 128, 224])))
        image = rng.random((h, w, 3), dtype=np.float32)
        np.testing.assert_allclose(
            to_model_input(image, spec), _reference_to_model_input(image, spec), atol=1e-4,
            err_msg=f"{h}x{w} -> {spec.size}",
        )


def test_work_is_bounded_by_the_output_not_the_square() -> None:
    import tracemalloc

    image = np.random.default_rng(0).random((400, 8000, 3), dtype=np.float32)  # 20:1
    tracemalloc.start()
    to_model_input(image, InputSpec(size=128))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Pad-then-resize built 8000 x 8000 x 3 floats (768 MB) for this 38 MB image; now one
    # channel's padded strip at a time: the extra memory stays below the image's own size.
    assert peak < 1.5 * image.nbytes, f"peak {peak / 2**20:.0f} MiB for a {image.nbytes / 2**20:.0f} MiB image"


@pytest.mark.parametrize("shape", [(10, 10_000), (20, 40_000), (10_000, 10)])
def test_extreme_aspect_ratios_are_refused_from_the_header(shape: tuple[int, int]) -> None:
    h, w = shape
    data = _save(Image.new("L", (w, h)), "PNG")
    assert len(data) < 2000  # a few hundred bytes that used to cost gigabytes
    with pytest.raises(InvalidImage, match=r"times longer than it is wide; the limit is 20:1"):
        inspect_image(data, max_pixels=LIMIT)
    with pytest.raises(InvalidImage, match="Crop it"):
        preprocess(data, InputSpec(size=128), max_pixels=LIMIT)


def _float_tiff(values: np.ndarray) -> bytes:
    return _save(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def test_non_finite_pixels_become_the_darkest_finite_value() -> None:
    values = ellipse(32)[..., 0].astype(np.float32)
    values[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    out = preprocess(_float_tiff(values), InputSpec(size=32), max_pixels=LIMIT)
    assert np.isfinite(out).all()
    assert out[0, :4].max() == 0.0  # empty sky, the image's minimum
    assert out.max() == pytest.approx(1.0)  # +inf did not squash the real range to 0


def test_an_image_without_finite_pixels_is_refused() -> None:
    with pytest.raises(InvalidImage, match="no finite pixel"):
        decode_image(_float_tiff(np.full((8, 8), np.nan)), max_pixels=LIMIT)
    with pytest.raises(InvalidImage, match="non-finite|NaN"):
        to_model_input(np.full((4, 4, 3), np.nan, np.float32), InputSpec(size=4))


def test_extreme_but_finite_floats_stay_finite() -> None:
    values = np.zeros((8, 8), np.float32)
    values[0, 0], values[7, 7] = -3e38, 3e38  # the span overflows float32
    out = decode_image(_float_tiff(values), max_pixels=LIMIT)
    assert np.isfinite(out).all() and out.max() == pytest.approx(1.0)


def _fits(*hdus: object) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(buf)  # type: ignore[arg-type]
    return buf.getvalue()


def test_fits_every_axis_is_checked() -> None:
    plane = ellipse(16)[..., 0].astype(np.float32)
    # 4-D with unit axes: the image plane is read.
    assert decode_image(_fits(fits.PrimaryHDU(plane[None, None])), max_pixels=LIMIT).shape == (16, 16, 3)
    # No image HDU at all, or only 1-D data.
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))])
    for data in (_fits(fits.PrimaryHDU()), _fits(fits.PrimaryHDU(np.ones(10, np.float32))),
                 _fits(fits.PrimaryHDU(), table)):
        with pytest.raises(InvalidImage, match="no HDU with a 2-D image"):
            inspect_image(data, max_pixels=LIMIT)
    # Too many planes: a cube is not an image.
    with pytest.raises(InvalidImage, match="image planes"):
        inspect_image(_fits(fits.PrimaryHDU(np.stack([plane] * 5))), max_pixels=LIMIT)


def test_fits_huge_declared_axes_are_refused_before_reading() -> None:
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, -32, 3
    header["NAXIS1"], header["NAXIS2"], header["NAXIS3"] = 64, 64, 2_000_000
    data = header.tostring().encode() + b"\0" * 2880  # a 64x64x2,000,000 cube's header, no data
    for call in (inspect_image, decode_image):
        with pytest.raises(InvalidImage, match="image planes|declares"):
            call(data, max_pixels=LIMIT)
    header["NAXIS3"] = 1  # plausible axes, but the file holds far less than they declare
    header["NAXIS1"], header["NAXIS2"] = 3000, 3000
    with pytest.raises(InvalidImage, match="declares 36,000,000 bytes"):
        decode_image(header.tostring().encode() + b"\0" * 2880, max_pixels=LIMIT)


def test_fits_stretch_needs_no_matplotlib() -> None:
    import subprocess
    import sys

    code = (
        "import sys, io, numpy as np; sys.modules['matplotlib'] = None\n"
        "from astropy.io import fits\n"
        "from shared.preprocessing import decode_image\n"
        "b = io.BytesIO(); fits.PrimaryHDU(np.arange(64, dtype=np.float32).reshape(8, 8)).writeto(b)\n"
        "print(decode_image(b.getvalue(), max_pixels=100).max())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(1.0)


# --------------------------------------------------------------------------- issue 11: FITS north up


def test_fits_is_shown_north_up_as_every_viewer_shows_it() -> None:
    # FITS row 1 is the bottom of the picture (ds9, astropy's imshow(origin="lower"),
    # survey cutouts north up). A bright blob in the file's first rows, on the left, must
    # come out at the bottom left of the decoded image, the seen image and the model input.
    from shared.seen import seen_png

    plane = np.zeros((40, 60), np.float32)
    plane[2:8, 3:12] = 1000.0  # first rows of the file = bottom; low columns = left
    plane[30:36, 45:50] = 300.0  # a fainter one at the top right
    buf = io.BytesIO()
    fits.PrimaryHDU(plane).writeto(buf)
    data = buf.getvalue()
    image = decode_image(data, max_pixels=LIMIT)
    assert image[-5, 6].min() > 0.9 and image[5, 6].max() < 0.1  # bottom left, not top left
    assert image[6, 47].min() > 0.3 and image[-6, 47].max() < 0.1  # top right
    model = preprocess(data, InputSpec(size=30))
    assert model[20:25, :6].mean() > model[5:10, :6].mean() + 0.3  # lower half holds the blob
    seen = np.asarray(Image.open(io.BytesIO(seen_png(data, max_pixels=LIMIT))))
    assert seen.shape == (256, 256, 3)
    # 60 px wide → 256 (×4.27) with 10 rows of padding above: the blob lands on rows ~180-203.
    assert seen[184:200, 15:45].mean() > 200 and seen[55:75, 15:45].mean() < 20
