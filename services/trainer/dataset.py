"""Training and evaluation arrays built from synthetic galaxies through the shared preprocessing.

Every example goes: seed → GalSim render (with the render-time augmentations) →
8-bit PNG bytes → :func:`shared.preprocessing.preprocess` with the manifest's
``InputSpec``. So the arrays a model trains on are by construction what the worker
makes of the same PNG. Inclinations are balanced over 5° bins, as IncliNET's
training set was. Rendering can be spread over a few processes; the result does
not depend on how many.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.trainer.synthetic import encode_png, render_galaxy
from shared.preprocessing import preprocess
from shared.registry import InputSpec

__all__ = ["Dataset", "balanced_inclinations", "example_seed", "build_dataset", "dihedral"]

# Per-example truth kept as arrays (the rest of the truth dict is dropped).
TRUTH_KEYS = ("axis_ratio", "measured_axis_ratio", "h_over_r", "snr", "psf_fwhm_px",
              "colour", "invert", "star")


@dataclass
class Dataset:
    """Model inputs, labels and per-example truth."""

    x: np.ndarray  # (N, S, S, C) float32, exactly preprocess(png, spec)
    y: np.ndarray  # (N,) float32 inclination in degrees
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    png: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> Dataset:
        """The examples at ``index`` (copies)."""
        return Dataset(
            x=self.x[index],
            y=self.y[index],
            truth={k: v[index] for k, v in self.truth.items()},
            seeds=self.seeds[index],
            png=[self.png[i] for i in index] if self.png is not None else None,
        )


def balanced_inclinations(
    n: int, rng: np.random.Generator, *, lo: float = 45.0, hi: float = 90.0, bin_deg: float = 5.0
) -> np.ndarray:
    """``n`` inclinations with (as nearly as possible) equal counts per ``bin_deg`` bin.

    Within a bin the value is uniform; the order is shuffled.
    """
    n_bins = max(1, int(round((hi - lo) / bin_deg)))
    edges = np.linspace(lo, hi, n_bins + 1)
    bins = np.arange(n) % n_bins
    values = edges[bins] + rng.uniform(0.0, 1.0, size=n) * (edges[bins + 1] - edges[bins])
    return rng.permutation(values)


def example_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for example ``index`` of a data set seeded by ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> 1)


def _render_chunk(
    job: tuple[list[int], list[float], dict[str, Any], bool, bool, bool],
) -> tuple[np.ndarray, list[dict[str, Any]], list[bytes] | None]:
    seeds, inclinations, spec_json, measure, clean, keep_png = job
    spec = InputSpec.model_validate(spec_json)
    arrays, truths, pngs = [], [], []
    for seed, inclination in zip(seeds, inclinations):
        rendered = render_galaxy(seed, inclination_deg=inclination, clean=clean, measure=measure)
        png = encode_png(rendered.image)
        arrays.append(preprocess(png, spec))
        rendered.truth.pop("params", None)
        truths.append(rendered.truth)
        if keep_png:
            pngs.append(png)
    return np.stack(arrays), truths, (pngs if keep_png else None)


def build_dataset(
    n: int,
    *,
    seed: int,
    spec: InputSpec,
    inclination_range: tuple[float, float] = (45.0, 90.0),
    workers: int = 1,
    measure: bool = False,
    clean: bool = False,
    keep_png: bool = False,
) -> Dataset:
    """Render ``n`` galaxies and preprocess them into model inputs.

    Parameters
    ----------
    n
        Number of examples.
    seed
        Seeds the inclinations and every example's render; different data sets
        (train, validation, test) must use different seeds.
    spec
        The model input spec, passed to :func:`shared.preprocessing.preprocess`.
    inclination_range
        Inclinations are balanced over 5° bins within this range.
    workers
        Rendering processes (spawned, so a parent that imported TensorFlow is safe).
    measure
        Also measure each image's axis ratio with adaptive moments (baseline).
    clean
        Render only typical well-observed galaxies (see ``synthetic.sample_params``).
    keep_png
        Keep the PNG bytes (for parity tests); they are otherwise dropped.
    """
    if n <= 0:
        raise ValueError(f"A data set needs at least one example, not {n}.")
    rng = np.random.default_rng([seed, 0])
    inclinations = balanced_inclinations(n, rng, lo=inclination_range[0], hi=inclination_range[1])
    seeds = [example_seed(seed, i) for i in range(n)]
    chunk = max(1, math.ceil(n / max(1, workers) / 4))
    jobs = [
        (seeds[i : i + chunk], inclinations[i : i + chunk].tolist(), spec.model_dump(),
         measure, clean, keep_png)
        for i in range(0, n, chunk)
    ]
    if workers <= 1:
        results = [_render_chunk(job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_render_chunk, jobs))
    x = np.concatenate([r[0] for r in results])
    truths = [t for r in results for t in r[1]]
    truth = {
        key: np.array([t.get(key, np.nan) for t in truths], dtype=np.float32)
        for key in TRUTH_KEYS
    }
    png = [p for r in results for p in (r[2] or [])] if keep_png else None
    return Dataset(
        x=x,
        y=np.asarray(inclinations, dtype=np.float32),
        truth=truth,
        seeds=np.asarray(seeds, dtype=np.int64),
        png=png,
    )


def dihedral(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90° rotations per image: exact, label-preserving, aspect-keeping.

    ``batch`` is ``(N, S, S, C)``; these eight symmetries of the square add to the
    render-time rotations without any resampling.
    """
    out = np.empty_like(batch)
    ks = rng.integers(0, 4, size=len(batch))
    flips = rng.random(len(batch)) < 0.5
    for i, (k, flip) in enumerate(zip(ks, flips)):
        image = np.rot90(batch[i], k=int(k), axes=(0, 1))
        out[i] = image[:, ::-1] if flip else image
    return out
