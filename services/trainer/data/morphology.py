"""Morphology scenes with simulated Galaxy Zoo volunteers.

An elliptical (Sersic n 3–4, axis ratio), a disk (spiral arms or not, a bar or not,
bulge fraction in five classes), an edge-on disk or an artifact (a lone star, a
satellite streak, noise). Volunteer votes are then simulated, and the volunteers
answer from what the image shows at the resolution the model is served, not from
the hidden truth (scenes version 2; version 1's volunteers used the intrinsic axis
ratio and S/N, which a 64-pixel image barely shows):

- the galaxy is drawn without noise, PSF-convolved, and reduced to the served size
  (:func:`what_shows`); its pixels above twice the noise there are what a volunteer
  sees: their extent (``visible_radius_px``) decides how sure the root answer and the
  shapes are, their second moments the apparent axis ratio (roundness and edge-on);
- arms and bars show by their own matched-filter S/N at the served size (the galaxy
  minus its smooth version; the bar alone), once the galaxy is resolved there;
- a galaxy is "featured" as far as it looks like a disk: arms or a bar that show, or
  a flattened shape; a featureless round disk looks smooth, as it does to people;
- each volunteer answers the root question and only the questions their own answers
  lead to.

The answer probabilities they vote with are kept with the set (``expected``): what a
perfect model would answer, and the floor no model can beat. The source
``morphology`` of a recipe builds the three splits (:func:`splits`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import galsim
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.trainer.data import render as syn
from services.trainer.data import scenes
from services.trainer.data.labelled import LabelledSet, Splits, render_examples, synthetic_splits
from services.trainer.data.render import (
    GalaxyParams,
    encode_png,
    galaxy_planes,
    inclination_from_axis_ratio,
    intrinsic_axis_ratio,
    sample_params,
)
from shared.registry import InputSpec
from shared.taskdefs import TaskDefinition, get_task_definition

__all__ = ["MORPHOLOGY_KINDS", "SourceParams", "render_morphology", "render_morphology_png",
           "what_shows", "answer_probabilities", "expected_fractions", "simulate_votes",
           "morphology_set", "splits"]

MORPHOLOGY_KINDS = {"elliptical": 0.35, "disk": 0.40, "edge_on": 0.18, "artifact": 0.07}
# Truth classes of the morphology questions.
ROUNDED_EDGES = (0.45, 0.8)  # apparent axis ratio: cigar < 0.45 ≤ in-between < 0.8 ≤ round
EDGE_ON_DEG = 75.0  # disks are drawn at 0–70° or 80–90°, volunteers' threshold between
BULGE_CLASSES = {  # bulge fraction ranges per answer, with gaps between them
    "none": (0.0, 0.0), "small": (0.04, 0.11), "moderate": (0.16, 0.29),
    "large": (0.34, 0.5), "dominant": (0.56, 0.72),
}
BULGE_EDGES = (0.02, 0.135, 0.315, 0.53)
# A served pixel counts as "seen" this many noise sigmas above the sky.
SEEN_SIGMAS = 2.0
# The size the volunteers look at: the recipe's input size (64 px by default).
SERVED_SIZE = 64

class SourceParams(BaseModel):
    """The ``morphology`` source's parameters in a recipe."""

    model_config = ConfigDict(extra="forbid")

    volunteers: int = Field(default=40, ge=1)  # simulated volunteers per galaxy


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
    cx, cy = scenes.centre(p)
    if sub == "star":
        star = syn._star(replace(p, star_x_px=cx, star_y_px=cy), 1.0)
        planes += scenes.star_planes(p, cx, cy, 1.0, spikes=bool(rng.random() < 0.7),
                               full_well=float(star.max()) * rng.uniform(0.1, 1.5))
    elif sub == "streak":
        angle = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
        dist = (xs - cx) * math.sin(angle) - (ys - cy) * math.cos(angle)
        width = p.psf_fwhm_px / 2.355
        planes += (np.exp(-0.5 * (dist / width) ** 2) / p.width)[..., None] * scenes.STAR_COLOUR
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
    return planes, scenes.noise_sigma(planes[..., 1], p.snr)


def _served(plane: np.ndarray, p: GalaxyParams, served_size: int) -> tuple[np.ndarray, float]:
    """``plane`` box-reduced to the served size (long side ``served_size``), and the scale
    from native to served pixels."""
    from PIL import Image

    scale = served_size / max(p.width, p.height)
    size = (max(1, round(p.width * scale)), max(1, round(p.height * scale)))
    small = Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64), scale


def what_shows(plane: np.ndarray, sigma: float, p: GalaxyParams, served_size: int,
               hlr_px: float, *, arms: np.ndarray | None = None,
               bar: np.ndarray | None = None) -> dict[str, float]:
    """What a volunteer can see of a noiseless galaxy at the served size.

    ``plane`` (the r band, PSF-convolved) is box-reduced to the size the model is
    served (the long side to ``served_size``), where the noise of ``sigma`` per native
    pixel averages down. Returns the radius of the area above :data:`SEEN_SIGMAS` times
    that noise (``visible_radius_px``, served pixels), the axis ratio of that area's
    light (``apparent_axis_ratio``, 1 when fewer than 5 pixels show: a dot looks round),
    the half-light radius over the PSF's FWHM there (``resolution``; a served pixel
    blurs as much as a FWHM of one pixel), and the matched-filter S/N at the served size
    of the arms and knots (``arms``: the galaxy minus its smooth version) and of the bar
    (``bar``): 0 where there are none.
    """
    small, scale = _served(plane, p, served_size)
    noise = sigma * min(1.0, scale)  # box-averaging shrinks the noise; upsizing does not
    seen = small > SEEN_SIGMAS * noise
    count = int(seen.sum())
    q_app = 1.0
    if count >= 5:
        ys, xs = np.nonzero(seen)
        w = small[seen]
        mx, my = np.average(xs, weights=w), np.average(ys, weights=w)
        cov = np.cov(np.stack([xs - mx, ys - my]), aweights=w)
        lo, hi = np.linalg.eigvalsh(cov + np.eye(2) / 12.0)  # a pixel has a width
        q_app = float(math.sqrt(max(lo, 0.0) / hi))
    psf = math.hypot(p.psf_fwhm_px * scale, 1.0)

    def snr(part: np.ndarray | None) -> float:
        if part is None:
            return 0.0
        return float(np.sqrt(np.sum(_served(part, p, served_size)[0] ** 2)) / noise)

    return {"visible_radius_px": math.sqrt(count / math.pi), "apparent_axis_ratio": q_app,
            "resolution": hlr_px * scale / psf, "arms_snr": snr(arms), "bar_snr": snr(bar)}


def render_morphology(seed: int, *, kind: str | None = None,
                      served_size: int = SERVED_SIZE) -> scenes.Scene:
    """Render one morphology scene; its truth decides every question of the vote tree.

    Parameters
    ----------
    seed
        Decides everything; the same seed (and kind) gives the same scene.
    kind
        ``elliptical``, ``disk`` (not edge-on), ``edge_on`` or ``artifact``; None draws
        one with the weights of :data:`MORPHOLOGY_KINDS`.
    served_size
        The model's input size: the volunteers judge the galaxy as it shows there.

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
    r_s = side * scenes.loguniform(rng, 0.03, 0.12)
    p = replace(p, star=False, snr=scenes.loguniform(rng, 15.0, 1000.0), scale_radius_px=r_s,
                bulge_hlr_px=p.bulge_hlr_px / p.scale_radius_px * r_s)
    truth: dict[str, Any] = {"kind": kind, "snr": p.snr, "psf_fwhm_px": p.psf_fwhm_px,
                             "colour": p.colour, "invert": p.invert, "width": p.width,
                             "height": p.height, "seed": int(seed), "artifact": None}
    spiral, bar, bulge_fraction = False, False, 0.0
    arms_plane: np.ndarray | None = None
    bar_plane: np.ndarray | None = None
    if kind == "elliptical":
        n = float(rng.choice([3.0, 3.5, 4.0]))
        hlr = side * scenes.loguniform(rng, 0.04, 0.14)
        q = rng.uniform(0.3, 1.0)
        planes = _elliptical_planes(p, n, hlr, q)
        truth.update(sersic_n=n, hlr_px=hlr, axis_ratio=q, inclination_deg=None)
        bulge_fraction = 1.0
    elif kind == "artifact":
        sub = str(rng.choice(["star", "streak", "noise"]))
        planes, sigma = _artifact(p, rng, sub)
        truth.update(artifact=sub, hlr_px=p.psf_fwhm_px / 2.0, axis_ratio=1.0, inclination_deg=None)
        q = 1.0
    else:
        bulge_class = str(rng.choice(list(BULGE_CLASSES)))
        bulge_fraction = rng.uniform(*BULGE_CLASSES[bulge_class])
        spiral = bool(rng.random() < 0.55)
        knots = min(rng.uniform(0.05, 0.2), 0.85 - bulge_fraction) if spiral else 0.0
        p = replace(p, bulge_fraction=bulge_fraction, knot_fraction=max(knots, 0.0),
                    bulge_hlr_px=p.bulge_hlr_px * (1.0 + bulge_fraction),
                    spiral_amplitude=rng.uniform(0.4, 0.9) if spiral else 0.0)
        planes = galaxy_planes(p)
        if spiral:  # what the arms and knots add to a smooth disk of the same light
            smooth = galaxy_planes(replace(p, spiral_amplitude=0.0, knot_fraction=0.0))
            arms_plane = planes[..., 1] - smooth[..., 1]
        bar = kind == "disk" and bool(rng.random() < 0.35)
        if bar:
            bar_shape = (rng.uniform(0.15, 0.3), r_s * rng.uniform(0.8, 1.3),
                         rng.uniform(0.15, 0.3), rng.uniform(0.0, 180.0))
            bar_part = _bar_planes(p, *bar_shape)
            bar_plane = bar_part[..., 1]
            planes = planes + bar_part
            truth["bar_shape"] = dict(zip(("fraction", "hlr_px", "axis_ratio", "angle_deg"),
                                          bar_shape))
        q = float(intrinsic_axis_ratio(p.inclination_deg, p.h_over_r))
        truth.update(inclination_deg=p.inclination_deg, axis_ratio=q, hlr_px=syn._EXP_HLR * r_s,
                     scale_radius_px=r_s, spiral_amplitude=p.spiral_amplitude,
                     knot_fraction=p.knot_fraction)
    if kind != "artifact":
        sigma = scenes.noise_sigma(planes[..., 1], p.snr)
    # What the volunteers see: the galaxy alone, at the served size, against the noise.
    seen = what_shows(planes[..., 1], sigma, p, served_size, truth["hlr_px"], arms=arms_plane,
                      bar=bar_plane)
    q_app = seen["apparent_axis_ratio"]
    apparent_incl = float(inclination_from_axis_ratio(q_app))
    cos_i = math.cos(math.radians(apparent_incl))
    # The galaxy as a whole shows once it spans a few pixels above the noise.
    extent = float(np.clip((seen["visible_radius_px"] - 1.5) / 5.0, 0.0, 1.0))
    if kind == "artifact":
        extent = float(np.clip(math.log(p.snr / 20.0) / math.log(15.0), 0.0, 1.0))
    # Arms and a bar show by their own S/N at the served size (8 unseen, 80 plain, on a
    # log scale), once the galaxy is resolved, and less as the disk tilts away.
    resolved = float(np.clip((seen["resolution"] - 1.0) / 2.0, 0.0, 1.0))
    arms = _plainness(seen["arms_snr"]) * resolved * float(np.clip(cos_i / 0.3, 0.0, 1.0))
    bar_seen = _plainness(seen["bar_snr"]) * resolved * float(np.clip(cos_i / 0.5, 0.0, 1.0))
    # A disk looks like one by its features or by a flattened shape; a featureless,
    # round disk looks smooth — and a flattened elliptical a little like a disk.
    flatness = float(np.clip((0.75 - q_app) / 0.4, 0.0, 1.0))
    if kind in ("disk", "edge_on"):
        disk_look = max(arms, bar_seen, flatness)
    else:
        disk_look = 0.3 * float(np.clip((0.5 - q_app) / 0.2, 0.0, 1.0))
    truth.update(
        pa_deg=p.pa_deg % 180.0, bulge_fraction=bulge_fraction, spiral=spiral, bar=bar,
        served_size=served_size, **seen, apparent_inclination_deg=apparent_incl,
        spiral_visibility=arms, bar_visibility=bar_seen, disk_look=disk_look,
        resolved=resolved, quality=extent,
    )
    field, _ = scenes.field_stars(p, rng, chance=0.3)
    planes = planes + field
    # The answers the truth gives (what a volunteer with a perfect view would say).
    truth_incl = truth["inclination_deg"] if kind in ("disk", "edge_on") else 0.0
    truth["answers"] = {
        "smooth-or-featured": {"elliptical": "smooth", "artifact": "artifact"}.get(
            kind, "featured-or-disk"
        ),
        "how-rounded": _classify(q, ROUNDED_EDGES, ["cigar-shaped", "in-between", "round"]),
        "disk-edge-on": "yes" if truth_incl >= EDGE_ON_DEG else "no",
        "has-spiral-arms": "yes" if spiral else "no",
        "bar": "yes" if bar else "no",
        "bulge-size": _classify(bulge_fraction, BULGE_EDGES, list(BULGE_CLASSES)),
    }
    return scenes.Scene(image=scenes.observe(planes, p, sigma), truth=truth)


def _plainness(snr: float) -> float:
    """How plainly a feature of this matched-filter S/N shows: 0 below 8, 1 above 80."""
    return float(np.clip(math.log10(max(snr, 1e-9) / 8.0), 0.0, 1.0))


def _phi(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


def _perceived(value: float, sigma: float, edges: tuple[float, ...]) -> np.ndarray:
    """Chance of each class when a volunteer sees ``value`` with Gaussian error ``sigma``."""
    cdf = _phi((np.asarray(edges) - value) / sigma)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def answer_probabilities(truth: dict[str, Any]) -> dict[str, np.ndarray]:
    """Chance of each answer of each question for one volunteer who is asked it.

    Everything but the kind of object comes from what the image shows
    (:func:`what_shows`): a galaxy is "featured" as far as it looks like a disk (arms
    or a bar that show, or a flattened shape; ``truth["disk_look"]``), and volunteers
    see less of one that covers few pixels above the noise (``truth["quality"]`` 0–1):
    it then looks smooth, shapes and bulges blur into neighbouring classes; roundness
    and edge-on are judged from the apparent axis ratio; arms and bars from their S/N
    at the served size.
    """
    qual, kind = truth["quality"], truth["answers"]["smooth-or-featured"]
    lost = 1.0 - qual
    if kind == "artifact":
        artifact = 0.8 + 0.15 * qual
        root = [0.7 * (1 - artifact), 0.3 * (1 - artifact), artifact]
    else:  # featured as far as it looks like a disk; smooth otherwise
        artifact = 0.02 + 0.06 * lost
        featured = 0.06 + 0.04 * lost + 0.85 * qual * truth["disk_look"]
        root = [1.0 - featured - artifact, featured, artifact]
    rounded = _perceived(truth["apparent_axis_ratio"], 0.06 + 0.12 * lost, ROUNDED_EDGES)[::-1]
    seen_sigma = 3.0 + 9.0 * lost  # degrees of error in a volunteer's idea of the inclination
    edge_on_yes = float(_phi((truth["apparent_inclination_deg"] - EDGE_ON_DEG) / seen_sigma))
    spiral_yes = 0.05 + 0.9 * truth["spiral_visibility"]
    bar_yes = 0.04 + 0.85 * truth["bar_visibility"]
    # An unresolved bulge is judged more roughly than one spread over many pixels.
    bulge_sigma = 0.05 + 0.1 * lost + 0.05 * (1.0 - truth["resolved"])
    bulge = _perceived(truth["bulge_fraction"], bulge_sigma, BULGE_EDGES)
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


def render_morphology_png(kind: str, seed: int) -> bytes:
    """PNG bytes of a morphology scene of ``kind`` (see :func:`render_morphology`)."""
    return encode_png(render_morphology(seed, kind=kind).image)


def expected_fractions(truth: dict[str, Any]) -> np.ndarray:
    """``(A,)`` the answer probabilities a volunteer asked each question votes with."""
    tree = get_task_definition("morphology").vote_tree
    assert tree is not None  # the morphology task is a vote tree by definition
    probs = answer_probabilities(truth)
    parts = [np.clip(probs[q.name], 0.0, None) for q in tree.questions]
    return np.concatenate([p / p.sum() for p in parts])


def _morphology_example(seed: int, _: Any,
                        options: dict[str, Any]) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    scene = render_morphology(seed, served_size=options["served_size"])
    votes = simulate_votes(scene.truth, volunteers=options["volunteers"], seed=seed)
    return encode_png(scene.image), votes, scene.truth


def morphology_set(n: int, *, seed: int, spec: InputSpec, volunteers: int = 40,
                   workers: int = 1) -> LabelledSet:
    """``n`` morphology scenes with simulated volunteer vote counts.

    Parameters
    ----------
    n, seed, spec, workers
        As for :func:`.rejection.rejection_set`.
    volunteers
        Volunteers per galaxy; each answers the root question.

    Returns
    -------
    LabelledSet
        ``y`` int32 ``(n, 17)`` vote counts in the morphology task's ``output_names``
        order; ``expected`` the answer probabilities behind them.
    """
    if volunteers < 1:
        raise ValueError(f"At least one volunteer is needed, not {volunteers}.")
    names = get_task_definition("morphology").output_names
    x, y, truths, seconds = render_examples(_morphology_example, n, seed=seed, spec=spec,
                                            workers=workers,
                                            options={"volunteers": volunteers,
                                                     "served_size": spec.size})
    description = scenes.scene_description("morphology", n, seed, spec, workers, truths, seconds)
    kinds = [t["kind"] for t in truths]
    description.update(
        volunteers=volunteers, kind_weights=MORPHOLOGY_KINDS,
        kinds={k: kinds.count(k) for k in MORPHOLOGY_KINDS},
        votes_per_answer={name: int(v) for name, v in zip(names, y.sum(axis=0))},
        volunteer_model="services.trainer.data.morphology.answer_probabilities",
        volunteers_see=f"the galaxy at the served {spec.size} px: pixels above "
                       f"{SEEN_SIGMAS:g} sigma, their axis ratio, its resolution (what_shows)",
    )
    ids = [f"morphology-{seed}-{i:06d}" for i in range(n)]
    return LabelledSet(x=x, y=y.astype(np.int32), ids=ids, truth=truths,
                       description=description, task="morphology", label_names=list(names),
                       expected=np.array([expected_fractions(t) for t in truths]))


def splits(params: dict[str, Any], *, task: TaskDefinition, sizes: dict[str, int | None],
           spec: InputSpec, seed: int, workers: int, train: bool = True) -> Splits:
    """Train, validation and test scenes of a recipe."""
    options = SourceParams.model_validate(params)
    return synthetic_splits(
        lambda split, n, s: morphology_set(n, seed=s, spec=spec, volunteers=options.volunteers,
                                           workers=workers),
        sizes=sizes, seed=seed, train=train)
