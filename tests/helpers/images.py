"""Real image files for tests: valid ones in many modes, and broken ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def ellipse(size: int = 64, *, axis_ratio: float = 0.5, seed: int = 0) -> np.ndarray:
    """A noisy bright ellipse on a dark sky, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r2 = (x / (size * 0.3)) ** 2 + (y / (size * 0.3 * axis_ratio)) ** 2
    img = np.exp(-3 * r2)[..., None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0, 0.02, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encode an array with Pillow."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_bytes(size: int = 64, **kwargs: object) -> bytes:
    return encode(ellipse(size, **kwargs))  # type: ignore[arg-type]


def truncated_png(size: int = 64) -> bytes:
    data = png_bytes(size)
    return data[: len(data) // 2]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a gigantic size (a decompression bomb's signature)."""
    data = bytearray(png_bytes(8))
    ihdr = bytearray(data[16:29])  # width, height, depth, colour type, ...
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)
