"""What the rejection and morphology scenes share: sources added to rendered galaxy planes.

Both build on the GalSim renderer in :mod:`.render`: its parameter draw
(:func:`~.render.sample_params`: size, PSF, colour or greyscale, inversion,
stretch), its noiseless galaxy planes (:func:`~.render.galaxy_planes`), its star
and its asinh stretch. A scene adds sources to those planes (a saturated star, a
second galaxy, field stars), then sky, noise and the stretch, exactly as
``render.render`` does. The scenes themselves are in :mod:`.rejection` and
:mod:`.morphology`; every example is rendered from its own seed
(:func:`.labelled.example_seed`), so a set does not depend on the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import galsim
import numpy as np

from services.trainer.data import render as syn
from services.trainer.data.render import BANDS, GalaxyParams, sample_params
from shared.registry import InputSpec

__all__ = ["SCENES_VERSION", "STAR_COLOUR", "Scene", "loguniform", "centre", "observe",
           "noise_sigma", "star_planes", "field_stars", "companion", "scene_description"]

SCENES_VERSION = 2
STAR_COLOUR = np.array([0.9, 1.0, 1.05])


@dataclass
class Scene:
    """A rendered scene: the 8-bit image (``(H, W, 3)`` RGB or ``(H, W)`` grey) and its truth."""

    image: np.ndarray
    truth: dict[str, Any]


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def centre(p: GalaxyParams) -> tuple[float, float]:
    """Pixel position of a galaxy's centre (GalSim's true centre plus the offset)."""
    return (p.width - 1) / 2.0 + p.offset_x_px, (p.height - 1) / 2.0 + p.offset_y_px


def observe(planes: np.ndarray, p: GalaxyParams, sigma: float) -> np.ndarray:
    """Sky, noise and the renderer's asinh stretch: g, r, i planes → 8-bit image."""
    rng = np.random.default_rng([p.seed, 1])
    planes = planes + p.sky_sigmas * sigma + rng.normal(0.0, sigma, size=planes.shape)
    if p.colour:  # SDSS-like colour: R = i, G = r, B = g, as synthetic.render
        return np.round(syn._stretch(planes[..., ::-1], p, sigma) * 255.0).astype(np.uint8)
    band = planes[..., BANDS.index(p.grey_band)][..., None]
    return np.round(syn._stretch(band, p, sigma)[..., 0] * 255.0).astype(np.uint8)


def noise_sigma(r_plane: np.ndarray, snr: float) -> float:
    """Noise sigma giving the source an integrated (matched-filter) S/N of ``snr``."""
    return math.sqrt(float(np.sum(r_plane * r_plane))) / snr


def star_planes(p: GalaxyParams, x: float, y: float, flux: float, *, spikes: bool,
                 full_well: float | None = None) -> np.ndarray:
    """A Moffat star (``synthetic._star``); above ``full_well`` it saturates: a flat core
    and a bleed trail along its column, as on a CCD."""
    star = syn._star(replace(p, star_x_px=x, star_y_px=y, star_spikes=spikes), flux)
    if full_well is not None and star.max() > full_well:
        column = int(np.clip(round(x), 0, p.width - 1))
        length = 0.02 * p.height * (1.0 + math.log10(float(star.max()) / full_well))
        rows = np.arange(p.height)
        trail = full_well * np.exp(-0.5 * ((rows - y) / length) ** 2)
        star = np.minimum(star, full_well)
        star[:, column] = np.maximum(star[:, column], trail)
    return star[..., None] * STAR_COLOUR


def field_stars(
    p: GalaxyParams, rng: np.random.Generator, *, chance: float
) -> tuple[np.ndarray, int]:
    """0–3 faint, unsaturated field stars anywhere (distractors, never a reason)."""
    count = int(rng.integers(1, 4)) if rng.random() < chance else 0
    planes = np.zeros((p.height, p.width, 3))
    for _ in range(count):
        planes += star_planes(p, rng.uniform(0, p.width - 1), rng.uniform(0, p.height - 1),
                               10 ** rng.uniform(-3.0, -1.7), spikes=False)
    return planes, count


def companion(p: GalaxyParams, seed: int, rng: np.random.Generator, *, radius_ratio: float,
               at: tuple[float, float], plain: bool = False) -> GalaxyParams:
    """Another galaxy in the same frame, seen through the same PSF."""
    q = sample_params(seed, inclination_range=(0.0, 90.0), size=max(p.width, p.height))
    x, y = at
    q = replace(q, width=p.width, height=p.height, psf=p.psf, psf_fwhm_px=p.psf_fwhm_px,
                psf_beta=p.psf_beta, scale_radius_px=p.scale_radius_px * radius_ratio,
                bulge_hlr_px=q.bulge_hlr_px / q.scale_radius_px * p.scale_radius_px * radius_ratio,
                offset_x_px=x - (p.width - 1) / 2.0, offset_y_px=y - (p.height - 1) / 2.0)
    if plain:  # tiny background galaxies: one FFT draw, no knots or arms
        q = replace(q, bulge_fraction=0.0, knot_fraction=0.0, spiral_amplitude=0.0)
    return q


def scene_description(task: str, n: int, seed: int, spec: InputSpec, workers: int,
                      truths: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What every scene set records about how it was made (for the manifest)."""
    return {
        "task": task, "source": "synthetic", "generator": f"services.trainer.data.{task}",
        "scenes_version": SCENES_VERSION, "galsim_version": galsim.__version__,
        "n": n, "seed": seed, "spec": spec.model_dump(), "workers": workers,
        "render_seconds": round(seconds, 2),
        "colour_fraction": float(np.mean([t["colour"] for t in truths])),
        "inverted_fraction": float(np.mean([t["invert"] for t in truths])),
        "native_sizes_px": [int(min(min(t["width"], t["height"]) for t in truths)),
                            int(max(max(t["width"], t["height"]) for t in truths))],
        "pipeline": "GalSim scene → 8-bit PNG → shared.preprocessing.preprocess",
    }
