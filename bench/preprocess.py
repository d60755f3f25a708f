"""Preprocessing speed: today's one function against the pre-issue-11 one, in the same run.

Prints, per format and size (256 and 1024 px), the milliseconds (best of N runs, old
and new alternating, so both see the same load on a shared machine) to turn the
encoded bytes into one 64 px model input — the old function (full float32 decode,
three float channels resized one by one; kept verbatim in
``tests/helpers/preprocess_reference.py``) against today's (8-bit resize, JPEG draft
decode) — with the ratio and the largest difference between their arrays. Then how
many times a target job's cutout and an upload are decoded (and PNG-encoded) on the
old path and on the worker's path now, with the milliseconds per image of each.

The pictures are a real deep-sky photo from Debian's stellarium-data when it is
installed (else a synthetic sky), resized to each size.

Usage: ``python bench/preprocess.py [--repeat 30] [--size 64]``
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.worker.cutouts import LocalArchiveProvider, fetch_oriented_cutout  # noqa: E402
from services.worker.orientation import orient_cutout, padded_fov_arcmin  # noqa: E402
from shared.preprocessing import DecodedImage, preprocess, to_model_input  # noqa: E402
from shared.registry import InputSpec  # noqa: E402
from shared.seen import SEEN_SIDE, seen_png  # noqa: E402
from tests.helpers.decodes import counting_decodes, decodes  # noqa: E402
from tests.helpers.images import ellipse  # noqa: E402
from tests.helpers.preprocess_reference import (  # noqa: E402
    reference_decode_image,
    reference_preprocess,
)

PHOTO = Path("/usr/share/stellarium/nebulae/default/m31.png")  # Debian stellarium-data
LIMIT = 50_000_000


def picture() -> tuple[Image.Image, str]:
    if PHOTO.is_file():
        return Image.open(PHOTO).convert("RGB"), f"stellarium-data {PHOTO.name}"
    return Image.fromarray(ellipse(1024, axis_ratio=0.4)), "synthetic ellipse (no stellarium-data)"


def encoded(image: Image.Image, side: int) -> dict[str, bytes]:
    """The picture at ``side`` px in every format the service reads."""
    colour = image.resize((side, side), Image.Resampling.LANCZOS)
    grey = colour.convert("L")

    def save(img: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **options)
        return buffer.getvalue()

    buffer = io.BytesIO()
    fits.PrimaryHDU(np.asarray(grey, dtype=np.float32) * 10.0 + 100.0).writeto(buffer)
    return {
        "PNG": save(colour, "PNG"),
        "PNG grey": save(grey, "PNG"),
        "JPEG": save(colour, "JPEG", quality=90),
        "JPEG grey": save(grey, "JPEG", quality=90),
        "GIF": save(colour.convert("P"), "GIF"),
        "TIFF": save(colour, "TIFF"),
        "WebP": save(colour, "WEBP", quality=90),
        "FITS": buffer.getvalue(),
    }


def paired_ms(old: Callable[[], object], new: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best milliseconds of ``old`` and of ``new``, run alternately.

    Alternating puts both under the same background load; the best of the runs is the
    one least disturbed by the other processes of a shared machine (as ``timeit`` does).
    """
    old(), new()  # warm caches and imports
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for work, into in ((old, times[0]), (new, times[1])):
            start = time.perf_counter()
            work()
            into.append(time.perf_counter() - start)
    return min(times[0]) * 1000.0, min(times[1]) * 1000.0


def old_seen_png(data: bytes) -> bytes:
    """The seen image as the old worker made it: a second full decode of the upload."""
    square = to_model_input(reference_decode_image(data, max_pixels=LIMIT), InputSpec(size=SEEN_SIDE))
    out = io.BytesIO()
    Image.fromarray(np.clip(np.rint(square * 255.0), 0, 255).astype(np.uint8)).save(
        out, format="PNG", compress_level=1
    )
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per case (best kept)")
    parser.add_argument("--size", type=int, default=64, help="model input side (the defaults: 64)")
    args = parser.parse_args()
    spec = InputSpec(size=args.size)
    image, source = picture()
    print(f"preprocess → {args.size} px model input; picture: {source}; best of {args.repeat}, "
          "old and new alternating")
    print(f"{'format':<10} {'px':>5} {'old ms':>8} {'new ms':>8} {'old/new':>8} {'max |Δ|':>9}")
    for side in (256, 1024):
        for name, data in encoded(image, side).items():
            old, new = paired_ms(lambda d=data: reference_preprocess(d, spec),
                                 lambda d=data: preprocess(d, spec), args.repeat)
            new_array = preprocess(data, spec)
            old_array = reference_preprocess(data, spec)
            if name == "FITS":  # now north up on purpose: compare with the old one flipped
                old_array = reference_preprocess(_flipped_fits(data), spec)
            diff = float(np.abs(new_array - old_array).max())
            print(f"{name:<10} {side:>5} {old:>8.2f} {new:>8.2f} {old / new:>7.1f}× {diff:>9.4f}")

    print("\nwhole images through a job (decodes and PNG encodes counted in Pillow/astropy)")
    with tempfile.TemporaryDirectory() as folder:
        raw = encoded(image, 256)["JPEG"]  # what a survey cutout service sends
        (Path(folder) / "NGC0224.jpg").write_bytes(raw)
        provider = LocalArchiveProvider(folder)
        fov, pa = 30.0, 35.0

        def old_target() -> object:
            data = provider.fetch(10.68, 41.27, padded_fov_arcmin(fov), name="NGC0224")
            reference_decode_image(data, max_pixels=LIMIT)  # the HTTP provider's body check
            png = orient_cutout(data, pa, fov, image_fov_arcmin=padded_fov_arcmin(fov))
            return [reference_preprocess(png, spec) for _ in range(1)]  # one spec, all tasks

        def new_target() -> object:
            pixels = fetch_oriented_cutout(provider, 10.68, 41.27, fov, pa_deg=pa, name="NGC0224")
            return DecodedImage(pixels).model_input(spec)

        upload = encoded(image, 1024)["JPEG"]

        def old_upload() -> object:
            return reference_preprocess(upload, spec), old_seen_png(upload)

        def new_upload() -> object:
            decoded = DecodedImage(upload, max_pixels=LIMIT)
            return decoded.model_input(spec), seen_png(decoded, max_pixels=LIMIT)

        print(f"{'path':<34} {'decodes':>7} {'PNG enc':>7} {'ms':>8}")
        for what, old_work, new_work in (
            ("target cutout (256 px JPEG)", old_target, new_target),
            ("upload (1024 px JPEG) + seen", old_upload, new_upload),
        ):
            times = paired_ms(old_work, new_work, args.repeat)
            for label, work, ms in (("old", old_work, times[0]), ("now", new_work, times[1])):
                with counting_decodes() as counts:
                    work()
                print(f"{what + ', ' + label:<34} {decodes(counts):>7} {counts['encode:PNG']:>7} "
                      f"{ms:>8.2f}")
    print("(old target path: body check + orientation + the PNG read back; a batch row also "
          "skips the PNG encode now)")


def _flipped_fits(data: bytes) -> bytes:
    with fits.open(io.BytesIO(data)) as hdul:
        flipped = np.ascontiguousarray(hdul[0].data[::-1])
    buffer = io.BytesIO()
    fits.PrimaryHDU(flipped).writeto(buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
