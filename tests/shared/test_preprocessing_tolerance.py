"""Issue 11: the cheaper preprocessing gives the old arrays, within a stated tolerance.

The old function (float32 decode at full resolution, three float channels resized one
by one) is kept verbatim in ``tests/helpers/preprocess_reference.py``. The new one
differs in two places only, each with its own bound on the [0, 1] scale:

- 8-bit images are resized as 8-bit: Pillow rounds after each of its two passes, so a
  value is at most one 8-bit level off (max ≤ 1/255 ≈ 0.0039, mean ≤ 0.0015);
- JPEGs are decoded in draft mode (the DCT scales by 1/2–1/8, keeping at least six times
  the output size and 256 px): max ≤ 0.02, mean ≤ 0.002. Measured at worst: max 0.018
  on the sharp star peaks of an odd-sized 1023×513 JPEG (chroma is upsampled differently
  in a scaled decode), mean 0.0014; on the real photos max 0.005.

16-bit, float and FITS images take the float path as before (≤ 1e-5); FITS is
compared with its rows flipped, since it is now shown north up on purpose.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from shared.preprocessing import DecodedImage, decode_image, decode_side, preprocess
from shared.registry import InputSpec
from shared.settings import REPO_ROOT
from tests.helpers.preprocess_reference import reference_decode_image, reference_preprocess
from tests.helpers.requirements import require_path

LIMIT = 50_000_000
EIGHT_BIT = (1.0 / 255.0 + 1e-6, 0.0015)  # (max, mean) abs difference
DRAFTED_JPEG = (0.02, 0.002)
FLOAT = (1e-5, 1e-6)
SPECS = [InputSpec(size=64), InputSpec(size=128, channels=1, scaling="symmetric")]
# Odd sizes, both orientations, small and large (the large ones draft a JPEG by 1/2–1/8).
SHAPES = [
    (37, 53), (301, 199), (64, 64), (700, 1024), (1023, 513),
    pytest.param((1600, 1200), marks=pytest.mark.slow),
]
LARGE = 700 * 1024  # past this many pixels only PNG and JPEG are tried (time)

PHOTOS = Path("/usr/share/stellarium/nebulae/default")  # Debian stellarium-data
CATALOGUE = REPO_ROOT.parent / "shared" / "data" / "stellarium_dso_trainval.csv"


def sky(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A sky-like uint8 RGB image: a tilted galaxy, sharp stars (the worst case for any
    resampling change), a sky gradient and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    cy, cx, r = height / 2, width / 2, min(height, width) / 5
    u, v = (x - cx) * 0.8 + (y - cy) * 0.6, (y - cy) * 0.8 - (x - cx) * 0.6
    image = np.exp(-((u / r) ** 2 + (v / (0.35 * r)) ** 2))[..., None] * np.array([1.0, 0.85, 0.7])
    for _ in range(max(3, height * width // 4000)):
        sy, sx = rng.uniform(0, height), rng.uniform(0, width)
        image += np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 1.2)[..., None] * rng.uniform(0.3, 1.0)
    image += 0.05 * y[..., None] / height + rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def assert_close(
    new: np.ndarray, old: np.ndarray, bound: tuple[float, float], what: str, spec: InputSpec
) -> None:
    assert new.shape == old.shape and new.dtype == np.float32, what
    diff = np.abs(new.astype(np.float64) - old)
    if spec.scaling == "symmetric":
        diff /= 2.0  # the bounds are on the [0, 1] scale; [-1, 1] doubles every difference
    assert diff.max() <= bound[0] and diff.mean() <= bound[1], (
        f"{what}: max {diff.max():.5f} (bound {bound[0]}), mean {diff.mean():.6f} (bound {bound[1]})"
    )


def encodings(height: int, width: int) -> list[tuple[str, bytes, tuple[float, float]]]:
    """The same sky in every format and mode, with the bound each must meet."""
    colour = Image.fromarray(sky(height, width))
    grey = colour.convert("L")
    drafted = max(height, width) >= 2 * decode_side(64)  # such a JPEG is drafted for 64 px
    jpeg = DRAFTED_JPEG if drafted else EIGHT_BIT
    sixteen = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    return [
        ("PNG colour", save(colour, "PNG"), EIGHT_BIT),
        ("PNG grey", save(grey, "PNG"), EIGHT_BIT),
        ("PNG RGBA", save(colour.convert("RGBA"), "PNG"), EIGHT_BIT),
        ("PNG 16-bit", save(sixteen, "PNG"), FLOAT),
        ("JPEG colour", save(colour, "JPEG", quality=90), jpeg),
        ("JPEG grey", save(grey, "JPEG", quality=90), jpeg),
        ("GIF", save(colour.convert("P"), "GIF"), EIGHT_BIT),
        ("TIFF colour", save(colour, "TIFF"), EIGHT_BIT),
        ("TIFF float", save(grey.convert("F"), "TIFF"), FLOAT),
        ("WebP", save(colour, "WEBP", quality=90), EIGHT_BIT),
        ("BMP", save(colour, "BMP"), EIGHT_BIT),
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_format_matches_the_old_function(shape: tuple[int, int]) -> None:
    for what, data, bound in encodings(*shape):
        if shape[0] * shape[1] > LARGE and not what.startswith(("PNG colour", "JPEG")):
            continue
        for spec in SPECS:
            assert_close(preprocess(data, spec, max_pixels=LIMIT), reference_preprocess(data, spec),
                         bound, f"{what} {shape} -> {spec.size}", spec)


def _fits(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(array).writeto(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(37, 53), (301, 199), (700, 1024)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_fits_matches_the_old_function_flipped_north_up(shape: tuple[int, int]) -> None:
    plane = sky(*shape).astype(np.float32).sum(axis=-1) * 10.0 + 100.0
    cube = np.stack([plane, plane * 0.7, plane * 0.4])
    for what, array in (("plane", plane), ("g/r/i cube", cube)):
        # The old function showed FITS row 0 at the top; the file with its rows reversed
        # therefore gives, through it, what the new one shows for the file itself.
        flipped = np.ascontiguousarray(array[..., ::-1, :])
        for spec in SPECS:
            assert_close(preprocess(_fits(array), spec), reference_preprocess(_fits(flipped), spec),
                         FLOAT, f"FITS {what} {shape} -> {spec.size}", spec)


def test_decode_image_still_gives_the_old_float_array() -> None:
    for what, data, bound in encodings(301, 199):
        if bound is not FLOAT and bound is not EIGHT_BIT:
            continue  # (JPEG at this size is not drafted either: exact too)
        np.testing.assert_allclose(decode_image(data, max_pixels=LIMIT),
                                   reference_decode_image(data, max_pixels=LIMIT), atol=1e-6,
                                   err_msg=what)


def test_one_decoded_image_gives_what_preprocess_gives_for_every_spec() -> None:
    # The worker decodes once for all its tasks; that must be preprocess(), exactly.
    for what, data, _ in encodings(301, 199) + encodings(700, 1024)[4:6]:  # + drafted JPEGs
        decoded = DecodedImage(data, max_pixels=LIMIT)
        for spec in [*SPECS, InputSpec(size=32), InputSpec(size=224)]:
            np.testing.assert_array_equal(decoded.model_input(spec), preprocess(data, spec),
                                          err_msg=f"{what} -> {spec.size}")


def real_photos() -> list[tuple[str, bytes]]:
    """The labelled Stellarium photos (the catalogue's list only), as PNG and as JPEG."""
    require_path(PHOTOS, package="stellarium-data")
    require_path(CATALOGUE, how="the team handbook's data folder, ../shared/data")
    with CATALOGUE.open(newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle) if row["split"] == "val"]
    photos = []
    for name in files[::3]:
        data = (PHOTOS / name).read_bytes()
        photos.append((name, data))
        photos.append((f"{name} as JPEG", save(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=90)))
    return photos


def test_real_photos_match_the_old_function() -> None:
    spec = InputSpec(size=64)
    for name, data in real_photos():
        bound = DRAFTED_JPEG if name.endswith("JPEG") else EIGHT_BIT
        assert_close(preprocess(data, spec), reference_preprocess(data, spec), bound, name, spec)
