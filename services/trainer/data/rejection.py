"""Rejection scenes: a disk galaxy and, drawn independently, every reason to reject it.

A disk galaxy at any inclination and, drawn independently, a bright saturated star
with diffraction spikes near or over it, a second galaxy of comparable size clearly
apart from it, a very low S/N, or the galaxy's centre placed so that at least
:data:`EDGE_CUT_FRACTION` of its light falls outside the frame. Negatives may hold
faint field stars and tiny background galaxies, so "a star" or "another blob" alone
is no reason. The source ``rejection`` of a recipe builds the three splits
(:func:`splits`).

A reason is what a person looking at the image could say, so a label never asks for
what the image cannot show (scenes version 2; these cost every reason of the v3 model
its precision or recall):

- **gaps around the thresholds** — inclinations are drawn outside 40–50° (face-on
  below 45°), S/N outside 10–40 (too faint below), and a galaxy moved to an edge has
  either at most :data:`EDGE_CLEAR_FRACTION` or at least :data:`EDGE_CUT_FRACTION` of
  its light outside: nobody tells 44° from 46° by eye;
- **a too-faint galaxy shows nothing else** — a low-S/N scene gets no second galaxy
  and no edge cut, and is never called face-on (its shape cannot be seen), nor is a
  galaxy with at least :data:`SHAPE_HIDDEN_FRACTION` of its light outside the frame;
- **a bright star is bright** — at least as bright as the galaxy, and never below
  :data:`STAR_MIN_SNR` against the noise, whatever the galaxy's S/N.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from services.trainer.data import scenes
from services.trainer.data.labelled import (
    LabelledSet,
    Splits,
    example_seed,
    render_examples,
    synthetic_splits,
)
from services.trainer.data.render import (
    GalaxyParams,
    encode_png,
    galaxy_planes,
    intrinsic_axis_ratio,
    sample_params,
)
from shared.registry import InputSpec
from shared.taskdefs import TaskDefinition, get_task_definition

__all__ = ["REASONS", "REJECTION_RATES", "EDGE_CUT_FRACTION", "EDGE_CLEAR_FRACTION",
           "FACE_ON_GAP_DEG", "SHAPE_HIDDEN_FRACTION", "SourceParams", "render_rejection",
           "render_rejection_png", "rejection_set", "splits"]

REASONS = ("face_on", "bright_star", "multiple_galaxies", "low_snr", "edge_cut")
# Chance that a scene is built with each reason (face_on comes from inclination ~ U(0, 90)).
REJECTION_RATES = {"bright_star": 0.2, "multiple_galaxies": 0.2, "low_snr": 0.2, "edge_cut": 0.22}
# A galaxy is "cut by the edge" when at least this share of its light is outside the
# frame; one moved to an edge without being cut keeps at most EDGE_CLEAR_FRACTION out.
EDGE_CUT_FRACTION = 0.25
EDGE_CLEAR_FRACTION = 0.1
# Face-on is below 45 degrees; no scene is drawn inside this band around it.
FACE_ON_GAP_DEG = (40.0, 50.0)
# With this share of its light outside the frame, a galaxy's shape cannot be judged.
SHAPE_HIDDEN_FRACTION = 0.5
# Integrated r-band S/N: "too faint or noisy" below, fine above; the gap keeps labels clear.
LOW_SNR_RANGE = (4.0, 10.0)
GOOD_SNR_RANGE = (40.0, 800.0)
# A "bright star" stands this far above the noise (integrated S/N) even in a faint image.
STAR_MIN_SNR = 80.0


class SourceParams(BaseModel):
    """The ``rejection`` source's parameters in a recipe."""

    model_config = ConfigDict(extra="forbid")

    rates: dict[str, float] | None = None  # chance of each reason but face-on (REJECTION_RATES)


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
    x, y = scenes.centre(p)
    return float(min(x, y, p.width - 1 - x, p.height - 1 - y))


def render_rejection(
    seed: int, *, reasons: Collection[str] | None = None, rates: dict[str, float] | None = None
) -> scenes.Scene:
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
    lo, hi = FACE_ON_GAP_DEG
    if reasons is None:
        want = {r: bool(rng.random() < rates[r]) for r in REJECTION_RATES}
        # U(0, 90) outside the gap: the side first, in proportion to its width.
        inclinations = (0.0, lo) if rng.random() < lo / (lo + 90.0 - hi) else (hi, 90.0)
        if want["low_snr"]:  # nothing else about a too-faint galaxy can be seen
            want.update(multiple_galaxies=False, edge_cut=False)
    else:
        unknown = set(reasons) - set(REASONS) - {"reject"}
        if unknown:
            raise ValueError(f"Unknown rejection reasons {sorted(unknown)}; use {list(REASONS)}.")
        if "low_snr" in reasons and set(reasons) & {"face_on", "multiple_galaxies", "edge_cut"}:
            raise ValueError("A too-faint galaxy shows no other reason but a bright star; "
                             f"{sorted(reasons)} cannot all be seen in one image.")
        want = {r: r in reasons for r in REJECTION_RATES}
        inclinations = (0.0, lo) if "face_on" in reasons else (hi, 90.0)
    p = sample_params(seed, inclination_range=inclinations)
    snr_range = LOW_SNR_RANGE if want["low_snr"] else GOOD_SNR_RANGE
    p = replace(p, star=False, snr=scenes.loguniform(rng, *snr_range))

    outside: float | None = None  # only measured where the galaxy was moved to an edge
    if want["edge_cut"]:
        # A forced face-on scene keeps its shape in view; a random one may be either
        # clearly cut or clearly not, never in between.
        shape_kept = reasons is not None and "face_on" in reasons
        for attempt in range(12):
            depth = rng.uniform(0.1, 0.6) if shape_kept else rng.uniform(-1.0, 1.5)
            if attempt == 11 and not shape_kept:
                depth = -0.5
            moved = _at_edge(p, rng, depth)
            planes, outside = _planes_with_outside(moved)
            cut = EDGE_CUT_FRACTION <= outside < (SHAPE_HIDDEN_FRACTION if shape_kept else 1.1)
            if cut or (reasons is None and outside <= EDGE_CLEAR_FRACTION):
                break
        p = moved
    else:
        planes = galaxy_planes(p)
    sigma = scenes.noise_sigma(planes[..., 1], p.snr)
    gx, gy = scenes.centre(p)
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
        other = scenes.companion(p, example_seed(seed, 1), rng, radius_ratio=ratio, at=best)
        flux = scenes.loguniform(rng, 0.5, 1.6)
        planes = planes + flux * galaxy_planes(other)
        truth["second_galaxy"] = {
            "centre_px": list(best), "separation_px": best_d, "radius_ratio": ratio,
            "flux_ratio": flux, "inclination_deg": other.inclination_deg,
        }
    n_tiny = int(rng.integers(1, 3)) if rng.random() < 0.25 else 0
    for k in range(n_tiny):  # tiny, faint background galaxies: not "another galaxy"
        where = (rng.uniform(0, p.width - 1), rng.uniform(0, p.height - 1))
        tiny = scenes.companion(p, example_seed(seed, 2 + k), rng,
                                radius_ratio=rng.uniform(0.1, 0.25), at=where, plain=True)
        planes = planes + 10 ** rng.uniform(-2.0, -1.2) * galaxy_planes(tiny)
    field, n_field = scenes.field_stars(p, rng, chance=0.4)
    planes = planes + field
    if want["bright_star"]:
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 4.0) * p.scale_radius_px
        sx = float(np.clip(gx + dist * math.cos(angle), 0.03 * p.width, 0.97 * (p.width - 1)))
        sy = float(np.clip(gy + dist * math.sin(angle), 0.03 * p.height, 0.97 * (p.height - 1)))
        # At least as bright as the galaxy, and plainly above the noise in a faint image.
        flux = max(scenes.loguniform(rng, 1.0, 6.0), STAR_MIN_SNR / p.snr)
        # The detector saturates a little above the galaxy's peak; the star far above it.
        full_well = float(planes[..., 1].max()) * scenes.loguniform(rng, 1.5, 5.0)
        planes = planes + scenes.star_planes(p, sx, sy, flux, spikes=True, full_well=full_well)
        alpha = p.psf_fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / 3.0) - 1.0))  # as synthetic._star
        truth["star"] = {"centre_px": [sx, sy], "flux_ratio": flux, "spikes": True,
                         "distance_px": math.hypot(sx - gx, sy - gy),
                         "peak_over_full_well": flux * 2.0 / (math.pi * alpha**2) / full_well}
    truth.update(n_field_stars=n_field, n_background_galaxies=n_tiny)
    shape_seen = not want["low_snr"] and (outside is None or outside < SHAPE_HIDDEN_FRACTION)
    labels = {
        "face_on": shape_seen and p.inclination_deg < 45.0,
        "bright_star": want["bright_star"],
        "multiple_galaxies": want["multiple_galaxies"],
        "low_snr": want["low_snr"],
        "edge_cut": outside is not None and outside >= EDGE_CUT_FRACTION,
    }
    labels = {"reject": any(labels.values()), **labels}
    truth["labels"] = labels
    truth["reasons"] = [r for r in REASONS if labels[r]]
    return scenes.Scene(image=scenes.observe(planes, p, sigma), truth=truth)


def render_rejection_png(reasons: set[str], seed: int) -> bytes:
    """PNG bytes of a rejection scene with exactly ``reasons`` true — for tests and demos."""
    return encode_png(render_rejection(seed, reasons=reasons).image)


def _rejection_example(seed: int, _: Any,
                       options: dict[str, Any]) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    scene = render_rejection(seed, rates=options["rates"])
    labels = scene.truth["labels"]
    label = np.array([labels[name] for name in options["label_names"]], dtype=np.float32)
    return encode_png(scene.image), label, scene.truth


def rejection_set(n: int, *, seed: int, spec: InputSpec, workers: int = 1,
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
    x, y, truths, seconds = render_examples(_rejection_example, n, seed=seed, spec=spec,
                                            workers=workers, options=options)
    description = scenes.scene_description("rejection", n, seed, spec, workers, truths, seconds)
    description.update(
        rates=options["rates"], edge_cut_fraction=EDGE_CUT_FRACTION,
        edge_clear_fraction=EDGE_CLEAR_FRACTION, face_on_below_deg=45.0,
        inclination_range_deg=[0.0, 90.0], inclination_gap_deg=list(FACE_ON_GAP_DEG),
        shape_hidden_fraction=SHAPE_HIDDEN_FRACTION, low_snr_range=list(LOW_SNR_RANGE),
        good_snr_range=list(GOOD_SNR_RANGE), star_min_snr=STAR_MIN_SNR,
        label_rules="services.trainer.data.rejection (module docstring): reasons a person "
                    "could see; gaps around every threshold",
        positives={name: int(y[:, j].sum()) for j, name in enumerate(names)},
    )
    ids = [f"rejection-{seed}-{i:06d}" for i in range(n)]
    return LabelledSet(x=x, y=y.astype(np.float32), ids=ids, truth=truths,
                       description=description, task="rejection", label_names=list(names))


def splits(params: dict[str, Any], *, task: TaskDefinition, sizes: dict[str, int | None],
           spec: InputSpec, seed: int, workers: int, train: bool = True) -> Splits:
    """Train, validation and test scenes of a recipe."""
    options = SourceParams.model_validate(params)
    return synthetic_splits(
        lambda split, n, s: rejection_set(n, seed=s, spec=spec, workers=workers,
                                          rates=options.rates),
        sizes=sizes, seed=seed, train=train)
