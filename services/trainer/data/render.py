"""The GalSim renderer: disk galaxies with exact truth, drawn to look like survey cutouts.

A galaxy is an inclined, thick exponential disk (``galsim.InclinedExponential``) plus
an optional bulge, clumpy star-forming knots projected onto the disk plane and a faint
spiral modulation, convolved with a varied PSF, with sky and noise at a varied S/N.
The g, r, i planes differ only in how bright each component is in that band (a red
bulge, blue knots), so one FFT draw per component serves all three bands. The planes
are then asinh-stretched into 8-bit colour or single-band greyscale, sometimes
inverted (black on white), sometimes with a saturated foreground star.

Every random choice comes from one ``numpy`` generator seeded by the caller, so a
seed always gives the same image. Rotation, translation, scale, blur, noise,
brightness/gamma, greyscale and inversion augmentations happen here, at render time,
which keeps the aspect ratio by construction (inclination lives in the ellipticity).

The inclination set (:mod:`.galaxies`) renders these galaxies as they are; the
rejection and morphology scenes (:mod:`.scenes`) add sources to their planes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import galsim
import numpy as np
from PIL import Image

__all__ = [
    "BANDS",
    "GalaxyParams",
    "Rendered",
    "sample_params",
    "galaxy_planes",
    "render",
    "encode_png",
    "intrinsic_axis_ratio",
    "inclination_from_axis_ratio",
    "measure_axis_ratio",
]

BANDS = ("g", "r", "i")
# Relative brightness of each component in g, r, i (r = 1): bulges are red, knots blue.
_DISK_COLOUR = np.array([0.75, 1.0, 1.2])
_BULGE_COLOUR = np.array([0.45, 1.0, 1.4])
_KNOT_COLOUR = np.array([1.6, 1.0, 0.7])
# Half-light radius of an exponential profile in units of its scale radius.
_EXP_HLR = 1.6783469900166605
# Generous FFT limit: thin edge-on disks with a small PSF need large grids. A looser
# maxk threshold (default 1e-3) draws ~1.5x faster; the change (~1e-3 of the peak)
# is below one 8-bit grey level.
_GSPARAMS = galsim.GSParams(maximum_fft_size=8192, maxk_threshold=5e-3)


@dataclass(frozen=True)
class GalaxyParams:
    """Every number that decides one rendered cutout; the truth is a subset of these.

    Lengths are in native pixels; angles in degrees. ``pa_deg`` is the major axis
    angle counter-clockwise from +x in GalSim's pixel frame (array row = y).
    """

    seed: int
    inclination_deg: float
    pa_deg: float
    width: int
    height: int
    scale_radius_px: float
    h_over_r: float
    bulge_fraction: float
    bulge_hlr_px: float
    bulge_n: float
    knot_fraction: float
    n_knots: int
    spiral_amplitude: float
    spiral_arms: int
    spiral_pitch_deg: float
    spiral_phase_deg: float
    spiral_sign: int
    offset_x_px: float
    offset_y_px: float
    psf: str
    psf_fwhm_px: float
    psf_beta: float
    snr: float
    sky_sigmas: float
    colour: bool
    grey_band: str
    invert: bool
    white_scale: float
    soft_log10: float
    black_sigmas: float
    gamma: float
    colour_jitter: tuple[float, ...]
    star: bool
    star_x_px: float
    star_y_px: float
    star_flux_ratio: float
    star_spikes: bool


@dataclass
class Rendered:
    """A rendered cutout: the 8-bit image, the r-band float image and the truth."""

    image: np.ndarray  # (H, W, 3) uint8, or (H, W) uint8 for greyscale
    r_band: np.ndarray  # (H, W) float32 noisy r-band flux, before any stretch
    truth: dict[str, Any]


def intrinsic_axis_ratio(inclination_deg: float | np.ndarray, q0: float | np.ndarray) -> Any:
    """Apparent axis ratio of an oblate disk of intrinsic thickness ``q0`` (Hubble 1926)."""
    c2 = np.cos(np.radians(inclination_deg)) ** 2
    return np.sqrt(c2 * (1.0 - np.square(q0)) + np.square(q0))


def inclination_from_axis_ratio(q: float | np.ndarray, q0: float = 0.2) -> Any:
    """The classical estimate ``cos² i = (q² − q0²)/(1 − q0²)``, in degrees (90 when q ≤ q0)."""
    q = np.asarray(q, dtype=np.float64)
    c2 = np.clip((np.square(q) - q0 * q0) / (1.0 - q0 * q0), 0.0, 1.0)
    return np.degrees(np.arccos(np.sqrt(c2)))


def sample_params(
    seed: int,
    *,
    inclination_deg: float | None = None,
    inclination_range: tuple[float, float] = (45.0, 90.0),
    size: int | None = None,
    clean: bool = False,
) -> GalaxyParams:
    """Draw the parameters of one cutout.

    Parameters
    ----------
    seed
        Seeds every random choice; the same seed gives the same parameters.
    inclination_deg
        Fixed inclination; drawn uniformly from ``inclination_range`` when None.
    size
        Fixed square side in pixels; drawn from 72–136 (sometimes non-square) when None.
    clean
        A typical well-observed galaxy: colour, high S/N, seeing FWHM 0.15 of the
        disk scale radius, no star, no inversion, a disk of typical thickness.
        Other draws stay random.
    """
    rng = np.random.default_rng(seed)
    u = rng.uniform
    inc = float(u(*inclination_range)) if inclination_deg is None else float(inclination_deg)
    side = int(rng.integers(72, 137)) if size is None else int(size)
    width = height = side
    if size is None and u() < 0.1:  # some cutouts are not square: preprocess pads them
        if u() < 0.5:
            width = int(side * u(0.7, 0.95))
        else:
            height = int(side * u(0.7, 0.95))
    # Scale 0.8–1.2 around a disk whose ~d25 fills 1/1.5 of the frame (IncliNET's crop).
    scale_radius = min(width, height) * 0.095 * u(0.8, 1.2)
    colour = True if clean else bool(u() < 0.5)
    jitter = tuple(float(x) for x in rng.uniform(0.85, 1.15, size=9))
    params = GalaxyParams(
        seed=int(seed),
        inclination_deg=inc,
        pa_deg=float(u(0.0, 360.0)),
        width=width,
        height=height,
        scale_radius_px=float(scale_radius),
        h_over_r=0.12 if clean else float(u(0.08, 0.18)),
        bulge_fraction=float(u(0.0, 0.3) if clean else u(0.0, 0.45) * (u() < 0.8)),
        bulge_hlr_px=float(scale_radius * u(0.15, 0.45)),
        # Quantised: GalSim tabulates each Sersic n and Moffat beta once (~20 ms each).
        bulge_n=float(rng.choice([2.0, 2.5, 3.0, 3.5, 4.0])),
        knot_fraction=float(u(0.0, 0.25) * (u() < 0.7)),
        n_knots=int(rng.integers(15, 60)),
        spiral_amplitude=float(u(0.0, 0.5) * (u() < 0.7)),
        spiral_arms=int(rng.integers(2, 4)),
        spiral_pitch_deg=float(u(10.0, 30.0)),
        spiral_phase_deg=float(u(0.0, 360.0)),
        spiral_sign=int(rng.choice([-1, 1])),  # handedness: a mirror flip
        offset_x_px=float(u(-0.1, 0.1) * width),
        offset_y_px=float(u(-0.1, 0.1) * height),
        psf="moffat" if (clean or u() < 0.7) else "kolmogorov",
        # Seeing relative to the disk, not in pixels: a cutout's pixel count says nothing
        # about how sharp it is (big nearby galaxies are sharp, small far ones blurred).
        # FWHM / scale radius is log-uniform in 0.04-0.45, never below 0.8 px.
        psf_fwhm_px=float(max(0.8, scale_radius * (0.15 if clean else np.exp(
            u(math.log(0.04), math.log(0.45)))))),
        psf_beta=float(rng.choice([2.5, 3.0, 3.5, 4.5])),
        snr=200.0 if clean else float(np.exp(u(np.log(40.0), np.log(800.0)))),
        sky_sigmas=float(u(-1.0, 3.0)),
        colour=colour,
        grey_band=str(rng.choice(BANDS)),
        invert=False if (clean or colour) else bool(u() < 0.5),
        white_scale=float(u(0.6, 1.4)),
        soft_log10=float(u(-1.7, -0.4)),
        black_sigmas=float(u(-1.0, 1.5)),
        gamma=1.0 if clean else float(np.exp(u(-0.25, 0.25))),
        colour_jitter=jitter,
        star=False if clean else bool(u() < 0.1),
        star_x_px=float(u(0.05, 0.95) * width),
        star_y_px=float(u(0.05, 0.95) * height),
        star_flux_ratio=float(10 ** u(-1.5, 0.3)),
        star_spikes=bool(u() < 0.5),
    )
    return params


def _psf(p: GalaxyParams) -> galsim.GSObject:
    if p.psf == "kolmogorov":
        return galsim.Kolmogorov(fwhm=p.psf_fwhm_px, gsparams=_GSPARAMS)
    return galsim.Moffat(beta=p.psf_beta, fwhm=p.psf_fwhm_px, gsparams=_GSPARAMS)


def _draw(obj: galsim.GSObject, p: GalaxyParams) -> np.ndarray:
    # Centre of the galaxy = image centre + offset; pixel scale 1 (lengths in pixels).
    image = obj.drawImage(
        nx=p.width, ny=p.height, scale=1.0, offset=(p.offset_x_px, p.offset_y_px)
    )
    return image.array.astype(np.float64)


def _disk_frame(p: GalaxyParams) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated into the galaxy frame (u along the major axis)."""
    ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
    # GalSim puts the true centre at (n-1)/2 for even and odd sizes alike.
    xs -= (p.width - 1) / 2.0 + p.offset_x_px
    ys -= (p.height - 1) / 2.0 + p.offset_y_px
    pa = math.radians(p.pa_deg)
    u = xs * math.cos(pa) + ys * math.sin(pa)
    v = -xs * math.sin(pa) + ys * math.cos(pa)
    return u, v


def _spiral_modulation(p: GalaxyParams) -> np.ndarray:
    """A faint logarithmic-spiral brightness modulation of the disk, zero-mean in azimuth.

    Applied to the PSF-convolved disk (cheap, slightly sharp arms); its amplitude
    fades as cos i because arms seen edge-on average out along the line of sight.
    """
    cos_i = math.cos(math.radians(p.inclination_deg))
    amplitude = p.spiral_amplitude * cos_i
    if amplitude <= 1e-3:
        return np.ones((p.height, p.width))
    u, v = _disk_frame(p)
    v_disk = v / max(cos_i, 0.05)  # deproject onto the disk plane
    r = np.hypot(u, v_disk) / p.scale_radius_px
    theta = np.arctan2(v_disk, u)
    winding = p.spiral_sign * np.log(r + 1e-3) / math.tan(math.radians(p.spiral_pitch_deg))
    phase = p.spiral_arms * (theta - winding) + math.radians(p.spiral_phase_deg)
    taper = 1.0 - np.exp(-r)  # no arms in the very centre
    return 1.0 + amplitude * taper * np.cos(phase)


def _fft_size(n: int) -> int:
    """Smallest 2^a·3^b ≥ n: sizes numpy's FFT handles fast."""
    best = 1 << (n - 1).bit_length()
    three = 1
    while three < best:
        size = three
        while size < n:
            size *= 2
        best = min(best, size)
        three *= 3
    return best


def _knots(p: GalaxyParams, psf: galsim.GSObject) -> np.ndarray:
    """Clumpy star-forming knots: point sources in the thin disk plane, PSF-convolved.

    Like ``galsim.RandomKnots`` (points following the disk light), but splatted onto
    the grid and convolved with the drawn PSF by one numpy FFT, which costs well
    under a millisecond where GalSim's k-space sum of deltas costs ~15 ms.
    """
    rng = np.random.default_rng([p.seed, 2])
    # Radii of an exponential disk's light: Gamma(2, r_s); azimuth uniform.
    radius = rng.gamma(2.0, p.scale_radius_px, size=p.n_knots)
    theta = rng.uniform(0.0, 2.0 * math.pi, size=p.n_knots)
    cos_i = math.cos(math.radians(p.inclination_deg))
    u, v = radius * np.cos(theta), radius * np.sin(theta) * cos_i
    pa = math.radians(p.pa_deg)
    x = u * math.cos(pa) - v * math.sin(pa) + (p.width - 1) / 2.0 + p.offset_x_px
    y = u * math.sin(pa) + v * math.cos(pa) + (p.height - 1) / 2.0 + p.offset_y_px
    flux = rng.uniform(0.3, 1.7, size=p.n_knots)
    flux *= p.knot_fraction / flux.sum()
    # Bilinear splat of each point onto the pixel grid (points off the grid are lost).
    grid = np.zeros((p.height, p.width))
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < p.width) & (yi >= 0) & (yi < p.height)
        np.add.at(grid, (yi[ok], xi[ok]), (flux * w)[ok])
    # Convolve with the pixelated PSF, drawn on a small odd stamp (its centre on a
    # pixel) and zero-padded to a fast FFT size without wrap-around.
    half = int(math.ceil(4.0 * p.psf_fwhm_px))
    stamp = psf.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=1.0).array
    ny, nx = _fft_size(p.height + 2 * half), _fft_size(p.width + 2 * half)
    kernel = np.zeros((ny, nx))
    kernel[: 2 * half + 1, : 2 * half + 1] = stamp
    kernel = np.roll(kernel, (-half, -half), axis=(0, 1))  # stamp centre to pixel (0, 0)
    padded = np.zeros((ny, nx))
    padded[: p.height, : p.width] = grid
    out = np.fft.irfft2(np.fft.rfft2(padded) * np.fft.rfft2(kernel), s=(ny, nx))
    return out[: p.height, : p.width]


def _star(p: GalaxyParams, flux: float) -> np.ndarray:
    """A bright Moffat star with optional diffraction spikes, drawn analytically (cheap)."""
    ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
    dx, dy = xs - p.star_x_px, ys - p.star_y_px
    alpha = p.psf_fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / 3.0) - 1.0))  # Moffat beta=3
    r2 = (dx * dx + dy * dy) / (alpha * alpha)
    core = (1.0 + r2) ** -3.0 * (2.0 / (math.pi * alpha * alpha))
    image = flux * core
    if p.star_spikes:
        width = 0.6 * p.psf_fwhm_px
        length = 0.06 * max(p.width, p.height)
        for a, b in ((dx, dy), (dy, dx)):
            image += flux * 0.003 * np.exp(-0.5 * (b / width) ** 2) / (1.0 + (a / length) ** 2)
    return image


def _stretch(planes: np.ndarray, p: GalaxyParams, sigma: float) -> np.ndarray:
    """asinh stretch to [0, 1] with a black point near the sky and a varied white point."""
    lum = planes.mean(axis=-1)
    sky = float(np.median(np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])))
    black = sky - p.black_sigmas * sigma
    white = black + max(float(np.percentile(lum, 99.7)) - black, 1e-12) * p.white_scale
    soft = (white - black) * 10**p.soft_log10
    out = np.arcsinh((planes - black) / soft) / math.asinh((white - black) / soft)
    out = np.clip(out, 0.0, 1.0) ** p.gamma
    if p.invert:
        out = 1.0 - out
    return out


def galaxy_planes(p: GalaxyParams) -> np.ndarray:
    """Noiseless, PSF-convolved g, r, i planes ``(H, W, 3)`` of the galaxy alone (flux ≈ 1 in r).

    No star, sky, noise or stretch: :func:`render` adds those; scene builders
    (:mod:`.scenes`) add further sources to these planes first.
    """
    psf = _psf(p)
    inc = p.inclination_deg * galsim.degrees
    rot = p.pa_deg * galsim.degrees
    cos_i = math.cos(math.radians(p.inclination_deg))
    disk_flux = 1.0 - p.bulge_fraction - p.knot_fraction
    disk = galsim.InclinedExponential(
        inc, scale_radius=p.scale_radius_px, scale_h_over_r=p.h_over_r, flux=disk_flux,
        gsparams=_GSPARAMS,
    ).rotate(rot)
    components = [_draw(galsim.Convolve(disk, psf), p) * _spiral_modulation(p)]
    colours = [_DISK_COLOUR * np.array(p.colour_jitter[0:3])]
    if p.bulge_fraction > 0:
        bulge = galsim.Sersic(
            n=p.bulge_n, half_light_radius=p.bulge_hlr_px, flux=p.bulge_fraction,
            gsparams=_GSPARAMS,
        )
        # Bulges are mildly flattened too, along the disk.
        bulge = bulge.shear(q=max(0.6, 1.0 - 0.4 * (1.0 - cos_i)), beta=0 * galsim.degrees)
        components.append(_draw(galsim.Convolve(bulge.rotate(rot), psf), p))
        colours.append(_BULGE_COLOUR * np.array(p.colour_jitter[3:6]))
    if p.knot_fraction > 0:
        components.append(_knots(p, psf))
        colours.append(_KNOT_COLOUR * np.array(p.colour_jitter[6:9]))
    planes = sum(c[..., None] * col[None, None, :] for c, col in zip(components, colours))
    return planes


def render(p: GalaxyParams, *, measure: bool = False) -> Rendered:
    """Render one cutout from its parameters.

    Parameters
    ----------
    p
        The parameters, usually from :func:`sample_params`.
    measure
        Also measure the observed axis ratio with adaptive moments (``galsim.hsm``)
        on the noisy r-band image, for the classical baseline; costs ~1 ms.
    """
    rng = np.random.default_rng([p.seed, 1])  # noise stream, independent of the draws
    planes = galaxy_planes(p)
    r_clean = planes[..., 1]
    sigma = math.sqrt(float(np.sum(r_clean * r_clean))) / p.snr
    if p.star:
        planes = planes + _star(p, p.star_flux_ratio)[..., None] * np.array([0.9, 1.0, 1.05])
    planes = planes + p.sky_sigmas * sigma + rng.normal(0.0, sigma, size=planes.shape)
    if p.colour:
        # SDSS-like colour: R = i, G = r, B = g.
        rgb = _stretch(planes[..., ::-1], p, sigma)
        image = np.round(rgb * 255.0).astype(np.uint8)
    else:
        band = planes[..., BANDS.index(p.grey_band)][..., None]
        image = np.round(_stretch(band, p, sigma)[..., 0] * 255.0).astype(np.uint8)
    q0 = p.h_over_r
    truth: dict[str, Any] = {
        "inclination_deg": p.inclination_deg,
        "pa_deg": p.pa_deg % 180.0,
        "axis_ratio": float(intrinsic_axis_ratio(p.inclination_deg, q0)),
        "h_over_r": q0,
        "scale_radius_px": p.scale_radius_px,
        "bulge_fraction": p.bulge_fraction,
        "psf_fwhm_px": p.psf_fwhm_px,
        "snr": p.snr,
        "colour": p.colour,
        "invert": p.invert,
        "star": p.star,
        "width": p.width,
        "height": p.height,
        "seed": p.seed,
    }
    r_band = planes[..., 1].astype(np.float32)
    if measure:
        truth["measured_axis_ratio"] = measure_axis_ratio(r_band - p.sky_sigmas * sigma, p)
    return Rendered(image=image, r_band=r_band, truth=truth)


def measure_axis_ratio(image: np.ndarray, p: GalaxyParams) -> float:
    """Observed axis ratio from adaptive second moments (PSF-convolved, as a catalogue has).

    Returns NaN when the moments do not converge (e.g. a star dominates).
    """
    guess = galsim.PositionD(
        (p.width + 1) / 2.0 + p.offset_x_px, (p.height + 1) / 2.0 + p.offset_y_px
    )
    try:
        moments = galsim.hsm.FindAdaptiveMom(
            galsim.Image(np.ascontiguousarray(image, dtype=np.float64), scale=1.0),
            guess_sig=2.0 * p.scale_radius_px,
            guess_centroid=guess,
            strict=True,
        )
    except galsim.GalSimHSMError:
        return float("nan")
    return float(moments.observed_shape.q)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit PNG bytes of an ``(H, W, 3)`` RGB or ``(H, W)`` greyscale uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode=None).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
