"""The inclination data: synthetic disk galaxies with exact inclinations, balanced over bins.

Every example goes: seed → GalSim render (:mod:`.render`, with the render-time
augmentations) → 8-bit PNG → :func:`shared.preprocessing.preprocess`. Inclinations
are balanced over bins of the task's range, as IncliNET's training set was. The test
split also measures each image's axis ratio with adaptive moments, which the
regression evaluation turns into the classical axis-ratio baseline.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from services.trainer.data.labelled import LabelledSet, Splits, render_examples, synthetic_splits
from services.trainer.data.render import encode_png, render, sample_params
from shared.registry import InputSpec
from shared.taskdefs import TaskDefinition

__all__ = ["SourceParams", "DESCRIPTION", "balanced_inclinations", "render_galaxy",
           "render_galaxy_png", "galaxy_set", "splits"]

DESCRIPTION: dict[str, Any] = {
    "source": "synthetic galaxies rendered with GalSim (services.trainer.data.render), exact truth",
    "galaxy": "galsim.InclinedExponential thick disk (h/r 0.08-0.18) + Sersic bulge "
    "(n 2-4, 0-45 % of the light in 80 % of galaxies) + projected star-forming knots "
    "(70 %) + faint logarithmic spiral modulation (70 %), any position angle",
    "observation": "Moffat (70 %) or Kolmogorov PSF, FWHM/scale radius 0.04-0.45 "
    "(log-uniform, at least 0.8 px); S/N 40-800 "
    "(log-uniform); sky offset; 72-136 px cutouts (10 % non-square), galaxy offset up "
    "to 10 % of the side, scale radius 0.095 x side x (0.8-1.2); 10 % with a bright "
    "foreground star (half with diffraction spikes)",
    "rendering": "50 % colour (i, r, g -> R, G, B), 50 % single-band g/r/i greyscale of "
    "which half inverted (black on white); asinh stretch with varied black/white point, "
    "softening and gamma; 8-bit PNG",
    "labels": "inclination uniform within equal bins over the task range (balanced)",
    "preprocessing": "shared.preprocessing.preprocess(png_bytes, manifest.input)",
    "augmentation": "render time: rotation (any PA), translation, scale, blur (PSF), noise, "
    "brightness/gamma, greyscale, inversion, star; training time: random flips and 90-degree "
    "rotations (aspect ratio always kept)",
}


class SourceParams(BaseModel):
    """The ``galaxies`` source's parameters in a recipe."""

    model_config = ConfigDict(extra="forbid")

    range: tuple[float, float] | None = None  # default: the task's range
    bin_width: float = 5.0  # inclinations balanced over bins this wide
    measure_test: bool = True  # measure the test images' axis ratios (the baseline)
    clean: bool = False  # only typical, well-observed galaxies


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


def render_galaxy(seed: int, *, inclination_deg: float | None = None,
                  inclination_range: tuple[float, float] = (45.0, 90.0), clean: bool = False,
                  size: int | None = None, measure: bool = False) -> Any:
    """Sample parameters from ``seed`` and render them (:func:`.render.sample_params`)."""
    params = sample_params(seed, inclination_deg=inclination_deg,
                           inclination_range=inclination_range, size=size, clean=clean)
    rendered = render(params, measure=measure)
    rendered.truth["params"] = asdict(params)
    return rendered


def render_galaxy_png(
    inclination_deg: float, seed: int = 0, *, clean: bool = True, size: int = 128
) -> bytes:
    """PNG bytes of one synthetic galaxy at a known inclination — for tests and demos.

    Parameters
    ----------
    inclination_deg
        Inclination from face-on, degrees (the served range is 45–90).
    seed
        Decides position angle, size, bulge, knots, arms and noise.
    clean
        A typical well-observed colour cutout (default); False draws every nuisance
        (greyscale, inversion, stars, low S/N) as the training set does.
    size
        Square side in pixels.
    """
    return encode_png(
        render_galaxy(seed, inclination_deg=inclination_deg, clean=clean, size=size).image
    )


def _galaxy_example(seed: int, inclination: float,
                    options: dict[str, Any]) -> tuple[bytes, float, dict[str, Any]]:
    rendered = render_galaxy(seed, inclination_deg=inclination, clean=options["clean"],
                             measure=options["measure"])
    rendered.truth.pop("params", None)
    return encode_png(rendered.image), inclination, rendered.truth


def galaxy_set(n: int, *, seed: int, spec: InputSpec,
               inclination_range: tuple[float, float] = (45.0, 90.0), bin_width: float = 5.0,
               workers: int = 1, measure: bool = False, clean: bool = False) -> LabelledSet:
    """Render ``n`` galaxies and preprocess them into model inputs.

    Parameters
    ----------
    seed
        Seeds the inclinations and every example's render; different data sets
        (train, validation, test) must use different seeds.
    spec
        The model input spec, passed to :func:`shared.preprocessing.preprocess`.
    inclination_range, bin_width
        Inclinations are balanced over ``bin_width`` bins within this range.
    workers
        Rendering processes (the result does not depend on their number).
    measure
        Also measure each image's axis ratio with adaptive moments
        (``truth["measured_axis_ratio"]``, NaN where the moments do not converge).
    clean
        Render only typical well-observed galaxies (see ``render.sample_params``).
    """
    if n <= 0:
        raise ValueError(f"A data set needs at least one example, not {n}.")
    lo, hi = inclination_range
    inclinations = balanced_inclinations(n, np.random.default_rng([seed, 0]), lo=lo, hi=hi,
                                         bin_deg=bin_width)
    x, y, truths, seconds = render_examples(
        _galaxy_example, n, seed=seed, spec=spec, workers=workers,
        options={"measure": measure, "clean": clean}, extras=inclinations.tolist())
    description = {**DESCRIPTION, "n": n, "seed": seed, "spec": spec.model_dump(),
                   "range": [lo, hi], "balanced_bin_deg": bin_width, "measured": measure,
                   "workers": workers, "render_seconds": round(seconds, 2)}
    ids = [f"galaxy-{seed}-{i:06d}" for i in range(n)]
    return LabelledSet(x=x, y=y.astype(np.float32), ids=ids, truth=truths,
                       description=description)


def splits(params: dict[str, Any], *, task: TaskDefinition, sizes: dict[str, int | None],
           spec: InputSpec, seed: int, workers: int, train: bool = True) -> Splits:
    """Train, validation and test galaxies of a recipe; the test split measured for the baseline."""
    options = SourceParams.model_validate(params)
    span = options.range or task.range
    if span is None:
        raise ValueError(f"Task {task.name!r} has no range; give the galaxies source one.")

    def make(split: str, n: int, split_seed: int) -> LabelledSet:
        data = galaxy_set(n, seed=split_seed, spec=spec, inclination_range=tuple(span),  # type: ignore[arg-type]
                          bin_width=options.bin_width, workers=workers, clean=options.clean,
                          measure=options.measure_test and split == "test")
        data.task = task.name
        return data

    return synthetic_splits(make, sizes=sizes, seed=seed, train=train)
