"""Count how often image pixels are decoded and PNGs encoded, by instrumenting the real code.

Pillow decodes an image's pixels in ``ImageFile.load`` while its ``tile`` list is not
empty (opening reads only the header); FITS pixels are read in the preprocessing
module's ``_fits_array``. Tests and ``bench/preprocess.py`` use this to show that a
job decodes each image once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image, ImageFile

import shared.preprocessing

__all__ = ["counting_decodes", "decodes"]


@contextmanager
def counting_decodes() -> Iterator[Counter[str]]:
    """While active, count ``decode:<FORMAT>`` per pixel decode and ``encode:PNG`` per PNG written."""
    Image.init()  # registers every plugin's encoder (SAVE is filled lazily)
    counts: Counter[str] = Counter()
    load, save, fits_array = ImageFile.ImageFile.load, Image.SAVE["PNG"], shared.preprocessing._fits_array

    def counted_load(self: ImageFile.ImageFile) -> Any:
        if self.tile:
            counts[f"decode:{self.format}"] += 1
        return load(self)

    def counted_save(*args: Any, **kwargs: Any) -> Any:
        counts["encode:PNG"] += 1
        return save(*args, **kwargs)

    def counted_fits(*args: Any, **kwargs: Any) -> Any:
        counts["decode:FITS"] += 1
        return fits_array(*args, **kwargs)

    ImageFile.ImageFile.load = counted_load  # type: ignore[method-assign]
    Image.SAVE["PNG"] = counted_save
    shared.preprocessing._fits_array = counted_fits
    try:
        yield counts
    finally:
        ImageFile.ImageFile.load = load  # type: ignore[method-assign]
        Image.SAVE["PNG"] = save
        shared.preprocessing._fits_array = fits_array


def decodes(counts: Counter[str]) -> int:
    """How many pixel decodes ``counts`` holds, all formats together."""
    return sum(n for key, n in counts.items() if key.startswith("decode:"))
