"""From what a client names — a PGC number, a name, a sky position — to what to image.

Used by the API for single target jobs (so an unknown name is a 404 before anything
is queued) and by the worker for batch rows, so both read targets the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.coordinates import parse_coordinates
from shared.errors import InvalidRequest
from shared.resolver import Resolver, field_of_view_arcmin
from shared.schemas import TargetInput

__all__ = ["LOCATOR_COLUMNS", "TARGET_KEYS", "resolve_target", "row_locator", "target_fields"]

TARGET_KEYS = ("pgc", "name", "target", "ra", "dec", "coordinates", "fov_arcmin")
#: Columns that say what a catalog row looks at; a batch needs one of them.
LOCATOR_COLUMNS = ("image_url", "url", "file", "pgc", "name", "target", "ra", "coordinates")
#: Radius of the cone search that names the object at a requested position.
_MATCH_ARCMIN = 1.0


_KNOWN = frozenset(TARGET_KEYS) | frozenset(LOCATOR_COLUMNS)


def target_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a row that say what to look at, under their lowercase names.

    Catalog headers come as people write them (``RA``, ``Dec``, ``PGC``, ``Name``,
    `` file ``): names are matched without case or surrounding blanks. Where two
    columns give the same name (``ra`` and ``RA``), the first non-empty value wins.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).strip().lower()
        if name in _KNOWN and out.get(name) in (None, ""):
            out[name] = value
    return out


def row_locator(values: Mapping[str, Any]) -> str | None:
    """What a catalog row names: ``url``, ``file``, ``pgc``, ``name``, ``coordinates`` or None.

    The precedence (an image URL, then a zip file, then a catalog id or name, then a
    position) is the one the API checks rows with and the worker runs them with.
    Column names are matched without case (:func:`target_fields`).
    """
    values = target_fields(values)
    if values.get("image_url") or values.get("url"):
        return "url"
    if values.get("file"):
        return "file"
    if values.get("pgc"):
        return "pgc"
    if values.get("name") or values.get("target"):
        return "name"
    if (values.get("ra") and values.get("dec")) or values.get("coordinates"):
        return "coordinates"
    return None


def _fov(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        fov = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"fov_arcmin {value!r} is not a number of arcminutes.") from None
    if not 0.05 <= fov <= 600.0:
        raise InvalidRequest(f"fov_arcmin {fov} is out of range: give 0.05 to 600 arcminutes.")
    return fov


def resolve_target(query: Mapping[str, Any], resolver: Resolver) -> TargetInput:
    """Resolve a target given as ``pgc``, ``name`` (or ``target``), ``ra`` + ``dec``, or
    ``coordinates`` (both in one string, e.g. ``"00h42m44.3s +41d16m09s"``).

    A named object is imaged over 1.5 × its major axis and turned by its position
    angle (IncliNET's recipe); ``fov_arcmin`` overrides the field. A position is
    matched to the nearest catalogued object within 1′, whose size and angle are
    then used; with no match the field defaults and nothing is rotated.

    Raises
    ------
    UnknownTarget
        For a name or number no catalogue lists (with suggestions).
    InvalidRequest
        For a malformed query or unparseable coordinates.
    """
    original, query = query, target_fields(query)
    fov = _fov(query.get("fov_arcmin"))
    pgc, name = query.get("pgc"), query.get("name") or query.get("target")
    if pgc not in (None, ""):
        text = str(pgc).strip()
        digits = text.upper().removeprefix("PGC").strip()
        # ASCII digits only, and few of them: '²'.isdigit() is True and int() refuses it.
        number = digits.isascii() and digits.isdigit() and len(digits) <= 9
        obj = resolver.resolve_pgc(int(digits)) if number else resolver.resolve(text[:200])
    elif name not in (None, ""):
        obj = resolver.resolve(str(name))
    elif (query.get("ra") not in (None, "") and query.get("dec") not in (None, "")) or query.get(
        "coordinates"
    ) not in (None, ""):
        if query.get("coordinates") not in (None, ""):
            ra, dec = parse_coordinates(str(query["coordinates"]))
        else:
            ra, dec = parse_coordinates(query["ra"], query["dec"])
        match = resolver.nearest(ra, dec, _MATCH_ARCMIN)
        obj = match[0] if match else None
        return TargetInput(
            query=dict(original),
            resolved=obj.model_dump() if obj else None,
            ra_deg=ra,
            dec_deg=dec,
            fov_arcmin=fov or (field_of_view_arcmin(obj) if obj else 2.0),
            pa_deg=obj.pa_deg if obj else None,
        )
    else:
        raise InvalidRequest(
            'Name a target: {"pgc": 2557}, {"name": "M33"}, {"ra": 10.68, "dec": 41.27} or '
            '{"coordinates": "00h42m44.3s +41d16m09s"}.'
        )
    if obj.ra_deg is None or obj.dec_deg is None:
        raise InvalidRequest(f"{obj.name} has no catalogued position, so it cannot be imaged.")
    return TargetInput(
        query=dict(original),
        resolved=obj.model_dump(),
        ra_deg=obj.ra_deg,
        dec_deg=obj.dec_deg,
        fov_arcmin=fov or field_of_view_arcmin(obj),
        pa_deg=obj.pa_deg,
    )
