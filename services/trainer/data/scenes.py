"""Synthetic scenes with exact truth for the rejection and morphology tasks.

Both build on the GalSim renderer in :mod:`services.trainer.synthetic`: its
parameter draw (:func:`~services.trainer.synthetic.sample_params`: size, PSF, colour
or greyscale, inversion, stretch), its noiseless galaxy planes
(:func:`~services.trainer.synthetic.galaxy_planes`), its star and its asinh stretch.
A scene adds sources to those planes (a saturated star, a second galaxy, a bar, an
elliptical), then sky, noise and the stretch, exactly as ``synthetic.render`` does.

Rejection: a disk galaxy at any inclination 0–90° (``face_on`` = inclination < 45°)
and, drawn independently, a bright saturated star with diffraction spikes near or
over it, a second galaxy of comparable size clearly apart from it, a very low S/N,
or the galaxy's centre placed so that at least :data:`EDGE_CUT_FRACTION` of its light
falls outside the frame. Negatives may hold faint field stars and tiny background
galaxies, so "a star" or "another blob" alone is no reason.

Morphology: an elliptical (Sersic n 3–4, axis ratio), a disk (spiral arms or not, a
bar or not, bulge fraction in five classes), an edge-on disk or an artifact (a lone
star, a satellite streak, noise). Volunteer votes are then simulated from the truth:
each volunteer perceives the galaxy more or less well depending on its S/N and size,
answers the root question and only the questions their own answers lead to.

Every example is rendered from its own seed (``dataset.example_seed``), so a data set
does not depend on the number of rendering processes.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import galsim
import numpy as np

from services.trainer import synthetic as syn
from services.trainer.dataset import example_seed
from services.trainer.labelled import LabelledSet
from services.trainer.synthetic import (
    BANDS,
    GalaxyParams,
    encode_png,
    galaxy_planes,
    inclination_from_axis_ratio,
    intrinsic_axis_ratio,
    sample_params,
)
from shared.preprocessing import preprocess
from shared.registry import InputSpec
from shared.taskdefs import get_task_definition

__all__ = [
    "REASONS",
    "REJECTION_RATES",
    "EDGE_CUT_FRACTION",
    "MORPHOLOGY_KINDS",
    "Scene",
    "render_rejection",
    "render_morphology",
    "answer_probabilities",
    "simulate_votes",
    "render_rejection_png",
    "render_morphology_png",
    "rejection_dataset",
    "morphology_dataset",
]

SCENES_VERSION = 1
REASONS = ("face_on", "bright_star", "multiple_galaxies", "low_snr", "edge_cut")
# Chance that a scene is built with each reason (face_on comes from inclination ~ U(0, 90)).
REJECTION_RATES = {"bright_star": 0.2, "multiple_galaxies": 0.2, "low_snr": 0.2, "edge_cut": 0.22}
# A galaxy is "cut by the edge" when at least this share of its light is outside the frame.
EDGE_CUT_FRACTION = 0.2
# Integrated r-band S/N: "too faint or noisy" below, fine above; the gap keeps labels clear.
LOW_SNR_RANGE = (4.0, 12.0)
GOOD_SNR_RANGE = (30.0, 800.0)
MORPHOLOGY_KINDS = {"elliptical": 0.35, "disk": 0.40, "edge_on": 0.18, "artifact": 0.07}
# Truth classes of the morphology questions.
ROUNDED_EDGES = (0.45, 0.8)  # apparent axis ratio: cigar < 0.45 ≤ in-between < 0.8 ≤ round
EDGE_ON_DEG = 75.0  # disks are drawn at 0–70° or 80–90°, volunteers' threshold between
BULGE_CLASSES = {  # bulge fraction ranges per answer, with gaps between them
    "none": (0.0, 0.0), "small": (0.04, 0.11), "moderate": (0.16, 0.29),
    "large": (0.34, 0.5), "dominant": (0.56, 0.72),
}
BULGE_EDGES = (0.02, 0.135, 0.315, 0.53)
_STAR_COLOUR = np.array([0.9, 1.0, 1.05])


@dataclass
class Scene:
    """A rendered scene: the 8-bit image (``(H, W, 3)`` RGB or ``(H, W)`` grey) and its truth."""

    image: np.ndarray
    truth: dict[str, Any]


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _centre(p: GalaxyParams) -> tuple[float, float]:
    """Pixel position of a galaxy's centre (GalSim's true centre plus the offset)."""
    return (p.width - 1) / 2.0 + p.offset_x_px, (p.height - 1) / 2.0 + p.offset_y_px


def _observe(planes: np.ndarray, p: GalaxyParams, sigma: float) -> np.ndarray:
    """Sky, noise and the renderer's asinh stretch: g, r, i planes → 8-bit image."""
    rng = np.random.default_rng([p.seed, 1])
    planes = planes + p.sky_sigmas * sigma + rng.normal(0.0, sigma, size=planes.shape)
    if p.colour:  # SDSS-like colour: R = i, G = r, B = g, as synthetic.render
        return np.round(syn._stretch(planes[..., ::-1], p, sigma) * 255.0).astype(np.uint8)
    band = planes[..., BANDS.index(p.grey_band)][..., None]
    return np.round(syn._stretch(band, p, sigma)[..., 0] * 255.0).astype(np.uint8)


def _sigma(r_plane: np.ndarray, snr: float) -> float:
    """Noise sigma giving the source an integrated (matched-filter) S/N of ``snr``."""
    return math.sqrt(float(np.sum(r_plane * r_plane))) / snr


def _star_planes(p: GalaxyParams, x: float, y: float, flux: float, *, spikes: bool,
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
    return star[..., None] * _STAR_COLOUR


def _field_stars(
    p: GalaxyParams, rng: np.random.Generator, *, chance: float
) -> tuple[np.ndarray, int]:
    """0–3 faint, unsaturated field stars anywhere (distractors, never a reason)."""
    count = int(rng.integers(1, 4)) if rng.random() < chance else 0
    planes = np.zeros((p.height, p.width, 3))
    for _ in range(count):
        planes += _star_planes(p, rng.uniform(0, p.width - 1), rng.uniform(0, p.height - 1),
                               10 ** rng.uniform(-3.0, -1.7), spikes=False)
    return planes, count


def _companion(p: GalaxyParams, seed: int, rng: np.random.Generator, *, radius_ratio: float,
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


def _planes_with_outside(p: GalaxyParams) -> tuple[np.ndarray, float]:
    """The galaxy's planes in the frame and the share of its r-band light outside it."""
    pad = int(math.ceil(6.0 * p.scale_radius_px)) + 4
    big = galaxy_planes(replace(p, width=p.width + 2 * pad, height=p.height + 2 * pad))
    inner = big[pad : pad + p.height, pad : pad + p.width]
    total = float(big[..., 1].sum())
    return np.ascontiguousarray(inner), max(0.0, 1.0 - float(inner[..., 1].sum()) / total)


def _at_edge(p: GalaxyParams, rng: np.random.Generator, depth: float) -> GalaxyParams:
    """Move the centre to ``depth`` scale radii inside (negative: beyond) an edge or corner."""
    w, h, r = p.width, p.height, p.scale_radius_px
    x = rng.uniform(0.2, 0.8) * (w - 1)
    y = rng.uniform(0.2, 0.8) * (h - 1)
    chosen = [str(rng.choice(["left", "right", "top", "bottom"]))]
    if rng.random() < 0.25:  # a corner
        pair = ["top", "bottom"] if chosen[0] in ("left", "right") else ["left", "right"]
        chosen.append(str(rng.choice(pair)))
    for side in chosen:
        d = depth * r if len(chosen) == 1 else depth * r * rng.uniform(0.8, 1.6)
        if side == "left":
            x = d
        elif side == "right":
            x = (w - 1) - d
        elif side == "top":
            y = d
        else:
            y = (h - 1) - d
    return replace(p, offset_x_px=x - (w - 1) / 2.0, offset_y_px=y - (h - 1) / 2.0)


def _edge_distance(p: GalaxyParams) -> float:
    x, y = _centre(p)
    return float(min(x, y, p.width - 1 - x, p.height - 1 - y))


def render_rejection(
    seed: int, *, reasons: Collection[str] | None = None, rates: dict[str, float] | None = None
) -> Scene:
    """Render one rejection scene.

    Parameters
    ----------
    seed
        Decides everything; the same seed (and arguments) gives the same scene.
    reasons
        Exactly these reasons are true (any of :data:`REASONS`; ``"reject"`` is
        implied and may be listed). None draws every reason at random: face-on from
        the inclination ~ U(0°, 90°), the others with ``rates``.
    rates
        Chance of building each of ``bright_star``, ``multiple_galaxies``, ``low_snr``,
        ``edge_cut`` (default :data:`REJECTION_RATES`).

    Raises
    ------
    ValueError
        If a reason is unknown.
    """
    rates = {**REJECTION_RATES, **(rates or {})}
    rng = np.random.default_rng([seed, 11])
    if reasons is None:
        want = {r: bool(rng.random() < rates[r]) for r in REJECTION_RATES}
        inclinations = (0.0, 90.0)
    else:
        unknown = set(reasons) - set(REASONS) - {"reject"}
        if unknown:
            raise ValueError(f"Unknown rejection reasons {sorted(unknown)}; use {list(REASONS)}.")
        want = {r: r in reasons for r in REJECTION_RATES}
        inclinations = (0.0, 45.0) if "face_on" in reasons else (45.0, 90.0)
    p = sample_params(seed, inclination_range=inclinations)
    snr_range = LOW_SNR_RANGE if want["low_snr"] else GOOD_SNR_RANGE
    p = replace(p, star=False, snr=_loguniform(rng, *snr_range))

    outside: float | None = None  # only measured where the galaxy was moved to an edge
    if want["edge_cut"]:
        for attempt in range(5):
            depth = rng.uniform(-1.0, 1.5) if attempt < 4 else -0.5
            moved = _at_edge(p, rng, depth)
            planes, outside = _planes_with_outside(moved)
            if outside >= EDGE_CUT_FRACTION or reasons is None:
                break
        p = moved
    else:
        planes = galaxy_planes(p)
    sigma = _sigma(planes[..., 1], p.snr)
    gx, gy = _centre(p)
    truth: dict[str, Any] = {
        "inclination_deg": p.inclination_deg, "pa_deg": p.pa_deg % 180.0,
        "axis_ratio": float(intrinsic_axis_ratio(p.inclination_deg, p.h_over_r)),
        "scale_radius_px": p.scale_radius_px, "snr": p.snr, "psf_fwhm_px": p.psf_fwhm_px,
        "colour": p.colour, "invert": p.invert, "grey_band": None if p.colour else p.grey_band,
        "width": p.width, "height": p.height, "seed": int(seed),
        "centre_px": [gx, gy], "edge_distance_px": _edge_distance(p), "outside_fraction": outside,
        "star": None, "second_galaxy": None,
    }

    if want["multiple_galaxies"]:
        ratio = rng.uniform(0.6, 1.1)
        r_min = 2.2 * p.scale_radius_px * (1.0 + ratio)  # apart: outskirts at most touch
        best, best_d = (0.0, 0.0), -1.0
        for _ in range(100):
            x, y = rng.uniform(0.1, 0.9) * (p.width - 1), rng.uniform(0.1, 0.9) * (p.height - 1)
            d = math.hypot(x - gx, y - gy)
            if d > best_d:
                best, best_d = (x, y), d
            if d >= r_min:
                break
        other = _companion(p, example_seed(seed, 1), rng, radius_ratio=ratio, at=best)
        flux = _loguniform(rng, 0.5, 1.6)
        planes = planes + flux * galaxy_planes(other)
        truth["second_galaxy"] = {
            "centre_px": list(best), "separation_px": best_d, "radius_ratio": ratio,
            "flux_ratio": flux, "inclination_deg": other.inclination_deg,
        }
    n_tiny = int(rng.integers(1, 3)) if rng.random() < 0.25 else 0
    for k in range(n_tiny):  # tiny, faint background galaxies: not "another galaxy"
        where = (rng.uniform(0, p.width - 1), rng.uniform(0, p.height - 1))
        tiny = _companion(p, example_seed(seed, 2 + k), rng, radius_ratio=rng.uniform(0.1, 0.25),
                          at=where, plain=True)
        planes = planes + 10 ** rng.uniform(-2.0, -1.2) * galaxy_planes(tiny)
    field, n_field = _field_stars(p, rng, chance=0.4)
    planes = planes + field
    if want["bright_star"]:
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 4.0) * p.scale_radius_px
        sx = float(np.clip(gx + dist * math.cos(angle), 0.03 * p.width, 0.97 * (p.width - 1)))
        sy = float(np.clip(gy + dist * math.sin(angle), 0.03 * p.height, 0.97 * (p.height - 1)))
        flux = _loguniform(rng, 0.5, 5.0)
        # The detector saturates a little above the galaxy's peak; the star far above it.
        full_well = float(planes[..., 1].max()) * _loguniform(rng, 1.5, 5.0)
        planes = planes + _star_planes(p, sx, sy, flux, spikes=True, full_well=full_well)
        alpha = p.psf_fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / 3.0) - 1.0))  # as synthetic._star
        truth["star"] = {"centre_px": [sx, sy], "flux_ratio": flux, "spikes": True,
                         "distance_px": math.hypot(sx - gx, sy - gy),
                         "peak_over_full_well": flux * 2.0 / (math.pi * alpha**2) / full_well}
    truth.update(n_field_stars=n_field, n_background_galaxies=n_tiny)
    labels = {
        "face_on": p.inclination_deg < 45.0,
        "bright_star": want["bright_star"],
        "multiple_galaxies": want["multiple_galaxies"],
        "low_snr": want["low_snr"],
        "edge_cut": outside is not None and outside >= EDGE_CUT_FRACTION,
    }
    labels = {"reject": any(labels.values()), **labels}
    truth["labels"] = labels
    truth["reasons"] = [r for r in REASONS if labels[r]]
    return Scene(image=_observe(planes, p, sigma), truth=truth)


# ----------------------------------------------------------------------------- morphology


def _classify(value: float, edges: tuple[float, ...], names: list[str]) -> str:
    return names[int(np.searchsorted(edges, value, side="right"))]


def _bar_planes(p: GalaxyParams, fraction: float, hlr: float, q: float, angle: float) -> np.ndarray:
    """A bar through the centre: an elongated Gaussian in the disk plane, seen at the disk's
    inclination (compressed along the minor axis) and position angle."""
    cos_i = math.cos(math.radians(p.inclination_deg))
    bar = galsim.Gaussian(half_light_radius=hlr, gsparams=syn._GSPARAMS)
    bar = bar.shear(q=q, beta=angle * galsim.degrees).transform(1.0, 0.0, 0.0, cos_i)
    bar = bar.withFlux(fraction).rotate(p.pa_deg * galsim.degrees)
    colour = syn._BULGE_COLOUR * np.array(p.colour_jitter[3:6])
    return syn._draw(galsim.Convolve(bar, syn._psf(p)), p)[..., None] * colour


def _elliptical_planes(p: GalaxyParams, n: float, hlr: float, q: float) -> np.ndarray:
    # Truncated at 4 half-light radii: untruncated n = 4 profiles need huge FFTs (~0.5 s).
    obj = galsim.Sersic(n=n, half_light_radius=hlr, trunc=4.0 * hlr, gsparams=syn._GSPARAMS)
    obj = obj.shear(q=q, beta=p.pa_deg * galsim.degrees)
    colour = syn._BULGE_COLOUR * np.array(p.colour_jitter[3:6])
    return syn._draw(galsim.Convolve(obj, syn._psf(p)), p)[..., None] * colour


def _artifact(p: GalaxyParams, rng: np.random.Generator, sub: str) -> tuple[np.ndarray, float]:
    """A lone bright star, a satellite streak or bare noise; returns planes and sigma."""
    planes = np.zeros((p.height, p.width, 3))
    cx, cy = _centre(p)
    if sub == "star":
        star = syn._star(replace(p, star_x_px=cx, star_y_px=cy), 1.0)
        planes += _star_planes(p, cx, cy, 1.0, spikes=bool(rng.random() < 0.7),
                               full_well=float(star.max()) * rng.uniform(0.1, 1.5))
    elif sub == "streak":
        angle = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
        dist = (xs - cx) * math.sin(angle) - (ys - cy) * math.cos(angle)
        width = p.psf_fwhm_px / 2.355
        planes += (np.exp(-0.5 * (dist / width) ** 2) / p.width)[..., None] * _STAR_COLOUR
    if sub == "noise":
        sigma = 1e-3
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
        slope = rng.uniform(0.0, 3.0) * sigma / max(p.width, p.height)
        theta = rng.uniform(0.0, 2.0 * math.pi)
        gradient = slope * ((xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta))
        planes += gradient[..., None]
        hot = rng.integers(0, [p.height, p.width], size=(int(rng.integers(0, 30)), 2))
        planes[hot[:, 0], hot[:, 1]] += rng.uniform(3, 30, size=(len(hot), 1)) * sigma
        return planes, sigma
    return planes, _sigma(planes[..., 1], p.snr)


def render_morphology(seed: int, *, kind: str | None = None) -> Scene:
    """Render one morphology scene; its truth decides every question of the vote tree.

    Parameters
    ----------
    seed
        Decides everything; the same seed (and kind) gives the same scene.
    kind
        ``elliptical``, ``disk`` (not edge-on), ``edge_on`` or ``artifact``; None draws
        one with the weights of :data:`MORPHOLOGY_KINDS`.

    Raises
    ------
    ValueError
        If ``kind`` is unknown.
    """
    rng = np.random.default_rng([seed, 21])
    if kind is None:
        kind = str(rng.choice(list(MORPHOLOGY_KINDS), p=list(MORPHOLOGY_KINDS.values())))
    elif kind not in MORPHOLOGY_KINDS:
        raise ValueError(f"Unknown morphology kind {kind!r}; use one of {list(MORPHOLOGY_KINDS)}.")
    incl = {"disk": (0.0, 70.0), "edge_on": (80.0, 90.0)}.get(kind, (0.0, 90.0))
    p = sample_params(seed, inclination_range=incl)
    side = min(p.width, p.height)
    r_s = side * _loguniform(rng, 0.03, 0.12)
    p = replace(p, star=False, snr=_loguniform(rng, 15.0, 1000.0), scale_radius_px=r_s,
                bulge_hlr_px=p.bulge_hlr_px / p.scale_radius_px * r_s)
    truth: dict[str, Any] = {"kind": kind, "snr": p.snr, "psf_fwhm_px": p.psf_fwhm_px,
                             "colour": p.colour, "invert": p.invert, "width": p.width,
                             "height": p.height, "seed": int(seed), "artifact": None}
    spiral, bar, bulge_fraction = False, False, 0.0
    if kind == "elliptical":
        n = float(rng.choice([3.0, 3.5, 4.0]))
        hlr = side * _loguniform(rng, 0.04, 0.14)
        q = rng.uniform(0.3, 1.0)
        planes = _elliptical_planes(p, n, hlr, q)
        truth.update(sersic_n=n, hlr_px=hlr, axis_ratio=q, inclination_deg=None)
        bulge_fraction, apparent_incl = 1.0, float(inclination_from_axis_ratio(q))
    elif kind == "artifact":
        sub = str(rng.choice(["star", "streak", "noise"]))
        planes, sigma = _artifact(p, rng, sub)
        truth.update(artifact=sub, hlr_px=p.psf_fwhm_px / 2.0, axis_ratio=1.0, inclination_deg=None)
        apparent_incl, q = 0.0, 1.0
    else:
        bulge_class = str(rng.choice(list(BULGE_CLASSES)))
        bulge_fraction = rng.uniform(*BULGE_CLASSES[bulge_class])
        spiral = bool(rng.random() < 0.55)
        knots = min(rng.uniform(0.05, 0.2), 0.85 - bulge_fraction) if spiral else 0.0
        p = replace(p, bulge_fraction=bulge_fraction, knot_fraction=max(knots, 0.0),
                    bulge_hlr_px=p.bulge_hlr_px * (1.0 + bulge_fraction),
                    spiral_amplitude=rng.uniform(0.4, 0.9) if spiral else 0.0)
        planes = galaxy_planes(p)
        bar = kind == "disk" and bool(rng.random() < 0.35)
        if bar:
            bar_shape = (rng.uniform(0.15, 0.3), r_s * rng.uniform(0.8, 1.3),
                         rng.uniform(0.15, 0.3), rng.uniform(0.0, 180.0))
            planes = planes + _bar_planes(p, *bar_shape)
            truth["bar_shape"] = dict(zip(("fraction", "hlr_px", "axis_ratio", "angle_deg"),
                                          bar_shape))
        q = float(intrinsic_axis_ratio(p.inclination_deg, p.h_over_r))
        apparent_incl = p.inclination_deg
        truth.update(inclination_deg=p.inclination_deg, axis_ratio=q, hlr_px=syn._EXP_HLR * r_s,
                     scale_radius_px=r_s, spiral_amplitude=p.spiral_amplitude,
                     knot_fraction=p.knot_fraction)
    if kind != "artifact":
        sigma = _sigma(planes[..., 1], p.snr)
    field, _ = _field_stars(p, rng, chance=0.3)
    planes = planes + field

    # How plainly the features show: arms fade as cos i, a big bulge outshines both.
    cos_i = math.cos(math.radians(apparent_incl))
    disk_share = float(np.clip((1.0 - bulge_fraction) / 0.6, 0.0, 1.0))
    spiral_visibility = (
        float(np.clip(p.spiral_amplitude * cos_i / 0.3, 0, 1)) * disk_share if spiral else 0.0
    )
    # Volunteers need S/N (integrated, so big faint galaxies are hard too) and size.
    q_snr = np.clip(math.log(p.snr / 20.0) / math.log(15.0), 0.0, 1.0)
    q_size = 1.0 if kind == "artifact" else np.clip((truth["hlr_px"] / side - 0.04) / 0.11, 0, 1)
    truth.update(
        pa_deg=p.pa_deg % 180.0, bulge_fraction=bulge_fraction, spiral=spiral, bar=bar,
        apparent_inclination_deg=apparent_incl, spiral_visibility=spiral_visibility,
        bar_visibility=float(np.clip(cos_i / 0.5, 0, 1)) * disk_share if bar else 0.0,
        quality=float(q_snr * q_size),
    )
    truth["answers"] = {
        "smooth-or-featured": {"elliptical": "smooth", "artifact": "artifact"}.get(
            kind, "featured-or-disk"
        ),
        "how-rounded": _classify(q, ROUNDED_EDGES, ["cigar-shaped", "in-between", "round"]),
        "disk-edge-on": "yes" if apparent_incl >= EDGE_ON_DEG else "no",
        "has-spiral-arms": "yes" if spiral else "no",
        "bar": "yes" if bar else "no",
        "bulge-size": _classify(bulge_fraction, BULGE_EDGES, list(BULGE_CLASSES)),
    }
    return Scene(image=_observe(planes, p, sigma), truth=truth)


def _phi(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


def _perceived(value: float, sigma: float, edges: tuple[float, ...]) -> np.ndarray:
    """Chance of each class when a volunteer sees ``value`` with Gaussian error ``sigma``."""
    cdf = _phi((np.asarray(edges) - value) / sigma)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def answer_probabilities(truth: dict[str, Any]) -> dict[str, np.ndarray]:
    """Chance of each answer of each question for one volunteer who is asked it.

    Volunteers see less in faint, small galaxies (``truth["quality"]`` 0–1): featured
    galaxies then look smooth, arms and bars go unseen, shapes and bulges blur into
    neighbouring classes.
    """
    qual, kind = truth["quality"], truth["answers"]["smooth-or-featured"]
    lost = 1.0 - qual
    if kind == "smooth":
        artifact, featured = 0.02 + 0.06 * lost, 0.06 + 0.04 * lost
        root = [1.0 - artifact - featured, featured, artifact]
    elif kind == "featured-or-disk":
        featured, artifact = 0.3 + 0.65 * qual, 0.02 + 0.06 * lost
        root = [1.0 - featured - artifact, featured, artifact]
    else:
        artifact = 0.8 + 0.15 * qual
        root = [0.7 * (1 - artifact), 0.3 * (1 - artifact), artifact]
    rounded = _perceived(truth["axis_ratio"], 0.06 + 0.12 * lost, ROUNDED_EDGES)[::-1]
    seen_sigma = 3.0 + 9.0 * lost  # degrees of error in a volunteer's idea of the inclination
    edge_on_yes = float(_phi((truth["apparent_inclination_deg"] - EDGE_ON_DEG) / seen_sigma))
    spiral_yes = 0.05 + 0.9 * qual * truth["spiral_visibility"]
    bar_yes = 0.04 + 0.85 * qual * truth["bar_visibility"]
    bulge = _perceived(truth["bulge_fraction"], 0.05 + 0.1 * lost, BULGE_EDGES)
    return {
        "smooth-or-featured": np.array(root),
        "how-rounded": rounded,  # round, in-between, cigar-shaped
        "disk-edge-on": np.array([edge_on_yes, 1.0 - edge_on_yes]),
        "has-spiral-arms": np.array([spiral_yes, 1.0 - spiral_yes]),
        "bar": np.array([bar_yes, 1.0 - bar_yes]),
        "bulge-size": bulge,
    }


def simulate_votes(truth: dict[str, Any], *, volunteers: int, seed: int) -> np.ndarray:
    """Vote counts ``(A,)`` int32 in ``output_names`` order of the morphology task.

    Every volunteer answers the root question; a question is asked only of the
    volunteers whose own earlier answer leads to it, so its votes sum to that
    answer's count (unreached questions get 0).
    """
    tree = get_task_definition("morphology").vote_tree
    assert tree is not None  # the morphology task is a vote tree by definition
    probs = answer_probabilities(truth)
    rng = np.random.default_rng([seed, 31])
    counts: dict[str, int] = {}
    for question in tree.questions:
        if question.name not in probs:
            raise ValueError(f"No volunteer model for question {question.name!r}.")
        asked = volunteers if question.depends_on is None else counts[question.depends_on]
        p = np.clip(probs[question.name], 0.0, None)
        votes = rng.multinomial(asked, p / p.sum())
        counts.update({f"{question.name}:{a}": int(v) for a, v in zip(question.answers, votes)})
    return np.array([counts[c] for c in tree.answer_columns], dtype=np.int32)


def render_rejection_png(reasons: set[str], seed: int) -> bytes:
    """PNG bytes of a rejection scene with exactly ``reasons`` true — for tests and demos."""
    return encode_png(render_rejection(seed, reasons=reasons).image)


def render_morphology_png(kind: str, seed: int) -> bytes:
    """PNG bytes of a morphology scene of ``kind`` (see :func:`render_morphology`)."""
    return encode_png(render_morphology(seed, kind=kind).image)


# ----------------------------------------------------------------------------- data sets


def _rejection_example(seed: int, options: dict[str, Any]) -> tuple[Scene, np.ndarray]:
    scene = render_rejection(seed, rates=options["rates"])
    labels = scene.truth["labels"]
    return scene, np.array([labels[name] for name in options["label_names"]], dtype=np.float32)


def _morphology_example(seed: int, options: dict[str, Any]) -> tuple[Scene, np.ndarray]:
    scene = render_morphology(seed)
    return scene, simulate_votes(scene.truth, volunteers=options["volunteers"], seed=seed)


_EXAMPLES: dict[str, Callable[[int, dict[str, Any]], tuple[Scene, np.ndarray]]] = {
    "rejection": _rejection_example,
    "morphology": _morphology_example,
}


def _render_chunk(
    job: tuple[str, list[int], dict[str, Any], dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    task, seeds, spec_json, options = job
    spec = InputSpec.model_validate(spec_json)
    xs, ys, truths = [], [], []
    for seed in seeds:
        scene, label = _EXAMPLES[task](seed, options)
        xs.append(preprocess(encode_png(scene.image), spec))
        ys.append(label)
        truths.append(scene.truth)
    return np.stack(xs), np.stack(ys), truths


def _build(task: str, n: int, seed: int, spec: InputSpec, workers: int,
           options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], float]:
    if n <= 0:
        raise ValueError(f"A data set needs at least one example, not {n}.")
    seeds = [example_seed(seed, i) for i in range(n)]
    chunk = max(1, math.ceil(n / max(1, workers) / 4))
    jobs = [(task, seeds[i : i + chunk], spec.model_dump(), options) for i in range(0, n, chunk)]
    start = time.perf_counter()
    if workers <= 1:
        results = [_render_chunk(job) for job in jobs]
    else:  # spawned, so a parent that imported TensorFlow is safe
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_render_chunk, jobs))
    seconds = time.perf_counter() - start
    x = np.concatenate([r[0] for r in results])
    y = np.concatenate([r[1] for r in results])
    return x, y, [t for r in results for t in r[2]], seconds


def _common_description(task: str, n: int, seed: int, spec: InputSpec, workers: int,
                        truths: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return {
        "task": task, "source": "synthetic", "generator": "services.trainer.scenes",
        "scenes_version": SCENES_VERSION, "galsim_version": galsim.__version__,
        "n": n, "seed": seed, "spec": spec.model_dump(), "workers": workers,
        "render_seconds": round(seconds, 2),
        "colour_fraction": float(np.mean([t["colour"] for t in truths])),
        "inverted_fraction": float(np.mean([t["invert"] for t in truths])),
        "native_sizes_px": [int(min(min(t["width"], t["height"]) for t in truths)),
                            int(max(max(t["width"], t["height"]) for t in truths))],
        "pipeline": "GalSim scene → 8-bit PNG → shared.preprocessing.preprocess",
    }


def rejection_dataset(n: int, *, seed: int, spec: InputSpec, workers: int = 1,
                      rates: dict[str, float] | None = None) -> LabelledSet:
    """``n`` rejection scenes through the shared preprocessing.

    Parameters
    ----------
    n
        Number of images.
    seed
        Seeds every scene; train, validation and test sets must use different seeds.
    spec
        The model input spec passed to :func:`shared.preprocessing.preprocess`.
    workers
        Rendering processes; the result does not depend on it.
    rates
        Chance of building each reason other than face-on (default :data:`REJECTION_RATES`).

    Returns
    -------
    LabelledSet
        ``y`` float32 ``(n, 6)`` of 0/1 in the rejection task's label order
        (``reject, face_on, bright_star, multiple_galaxies, low_snr, edge_cut``).
    """
    names = get_task_definition("rejection").output_names
    options = {"rates": {**REJECTION_RATES, **(rates or {})}, "label_names": names}
    x, y, truths, seconds = _build("rejection", n, seed, spec, workers, options)
    description = _common_description("rejection", n, seed, spec, workers, truths, seconds)
    description.update(
        rates=options["rates"], edge_cut_fraction=EDGE_CUT_FRACTION, face_on_below_deg=45.0,
        inclination_range_deg=[0.0, 90.0], low_snr_range=list(LOW_SNR_RANGE),
        good_snr_range=list(GOOD_SNR_RANGE),
        positives={name: int(y[:, j].sum()) for j, name in enumerate(names)},
    )
    ids = [f"rejection-{seed}-{i:06d}" for i in range(n)]
    return LabelledSet(x=x, y=y.astype(np.float32), ids=ids, truth=truths,
                       description=description, task="rejection", label_names=list(names))


def morphology_dataset(n: int, *, seed: int, spec: InputSpec, volunteers: int = 40,
                       workers: int = 1) -> LabelledSet:
    """``n`` morphology scenes with simulated volunteer vote counts.

    Parameters
    ----------
    n, seed, spec, workers
        As for :func:`rejection_dataset`.
    volunteers
        Volunteers per galaxy; each answers the root question.

    Returns
    -------
    LabelledSet
        ``y`` int32 ``(n, 17)`` vote counts in the morphology task's ``output_names`` order.
    """
    if volunteers < 1:
        raise ValueError(f"At least one volunteer is needed, not {volunteers}.")
    names = get_task_definition("morphology").output_names
    x, y, truths, seconds = _build("morphology", n, seed, spec, workers, {"volunteers": volunteers})
    description = _common_description("morphology", n, seed, spec, workers, truths, seconds)
    kinds = [t["kind"] for t in truths]
    description.update(
        volunteers=volunteers, kind_weights=MORPHOLOGY_KINDS,
        kinds={k: kinds.count(k) for k in MORPHOLOGY_KINDS},
        votes_per_answer={name: int(v) for name, v in zip(names, y.sum(axis=0))},
        volunteer_model="services.trainer.scenes.answer_probabilities",
    )
    ids = [f"morphology-{seed}-{i:06d}" for i in range(n)]
    return LabelledSet(x=x, y=y.astype(np.int32), ids=ids, truth=truths,
                       description=description, task="morphology", label_names=list(names))
