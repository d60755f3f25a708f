"""Sky positions typed by people: degrees or sexagesimal, checked and made ICRS degrees."""

from __future__ import annotations

import math
from typing import NamedTuple

from shared.errors import InvalidRequest

__all__ = ["SkyPosition", "parse_coordinates"]


class SkyPosition(NamedTuple):
    """An ICRS position in degrees."""

    ra_deg: float
    dec_deg: float


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _ra_unit(text: str) -> str:
    """Sexagesimal RA with ``h``/``:``/spaces is in hours; with ``d``/``°`` in degrees."""
    lowered = text.strip().lower()
    if "d" in lowered or "°" in lowered:
        return "deg"
    return "hourangle"


def parse_coordinates(ra: float | str, dec: float | str | None = None) -> SkyPosition:
    """Parse an ICRS position given in degrees or sexagesimal notation.

    Parameters
    ----------
    ra
        Degrees (``10.6848``, ``"10.6848"``), sexagesimal hours (``"00h42m44.3s"``,
        ``"00:42:44.3"``, ``"00 42 44.3"``) or sexagesimal degrees (``"10d41m05s"``).
        With ``dec`` omitted, a string holding both, e.g. ``"00:42:44.3 +41:16:09"``
        or ``"10.6848 41.2689"``.
    dec
        Degrees or sexagesimal degrees (``"+41d16m09s"``, ``"+41:16:09"``).

    Returns
    -------
    SkyPosition
        ``(ra_deg, dec_deg)`` with RA in [0, 360) and Dec in [-90, 90].

    Raises
    ------
    InvalidRequest
        Unparseable text, non-finite numbers, or values out of range.
    """
    if dec is None:
        if not isinstance(ra, str):
            raise InvalidRequest("Give both RA and Dec, e.g. ra=10.6848&dec=41.2689.")
        ra, dec = _split_pair(ra)
    ra_num, dec_num = _as_number(ra), _as_number(dec)
    ra_deg = ra_num if ra_num is not None else _parse_angle(str(ra), _ra_unit(str(ra)), "RA")
    dec_deg = dec_num if dec_num is not None else _parse_angle(str(dec), "deg", "Dec")
    if not (math.isfinite(ra_deg) and math.isfinite(dec_deg)):
        raise InvalidRequest(f"Coordinates must be finite numbers, got RA={ra!r}, Dec={dec!r}.")
    if not 0.0 <= ra_deg < 360.0:
        raise InvalidRequest(
            f"RA {ra!r} is out of range: give 0 ≤ RA < 360 degrees or 0h ≤ RA < 24h."
        )
    if not -90.0 <= dec_deg <= 90.0:
        raise InvalidRequest(f"Dec {dec!r} is out of range: give −90 ≤ Dec ≤ +90 degrees.")
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coord = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    return SkyPosition(float(coord.ra.deg), float(coord.dec.deg))


def _split_pair(text: str) -> tuple[str, str]:
    """Split ``"RA Dec"`` where Dec starts at a sign or after the RA's three fields."""
    parts = text.replace(",", " ").split()
    signed = [i for i, part in enumerate(parts) if part[:1] in "+-" and i > 0]
    if signed:
        cut = signed[0]
    elif len(parts) == 2:
        cut = 1
    elif len(parts) == 6:
        cut = 3
    else:
        raise InvalidRequest(
            f"Cannot tell RA from Dec in {text!r}. Give them separately, or as "
            "'00:42:44.3 +41:16:09' or '10.6848 41.2689'."
        )
    return " ".join(parts[:cut]), " ".join(parts[cut:])


def _parse_angle(text: str, unit: str, label: str) -> float:
    from astropy import units as u
    from astropy.coordinates import Angle

    try:
        angle = Angle(text.strip(), unit=u.hourangle if unit == "hourangle" else u.deg)
    except (ValueError, TypeError, u.UnitsError) as exc:
        example = (
            "'00h42m44.3s', '00:42:44.3' or 10.6848"
            if label == "RA"
            else ("'+41d16m09s', '+41:16:09' or 41.2689")
        )
        raise InvalidRequest(
            f"{label} {text!r} is not a coordinate skyserve can read; write it like {example}."
        ) from exc
    if unit == "hourangle" and not 0.0 <= float(angle.hour) < 24.0:
        raise InvalidRequest(f"{label} {text!r} is out of range: hours must be in [0, 24).")
    return float(angle.deg)
