"""Offline resolver for catalog-ID and coordinate jobs, backed by OpenNGC.

The ``pyongc`` wheel ships ``ongc.db`` (SQLite; ``objects`` with ra/dec in radians,
major/minor axes in arcmin, PA in degrees east of north; ``objIdentifiers``). The
file is opened read-only where the package installed it, read once into in-memory
indexes on first use, and then never touched again: a lookup is a dict probe, a
cone search one vectorised haversine over ~13,000 positions.
"""

from __future__ import annotations

import difflib
import math
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field

from shared.coordinates import SkyPosition, parse_coordinates
from shared.errors import InvalidRequest, UnknownTarget

__all__ = [
    "DEFAULT_FOV_ARCMIN",
    "FOV_FACTOR",
    "CatalogObject",
    "Resolver",
    "SkyPosition",
    "default_db_path",
    "field_of_view_arcmin",
    "get_resolver",
    "normalise_identifier",
    "parse_coordinates",
]

#: IncliNET crops to ``1.5 · D25``; OpenNGC's major axis is the D25 diameter for galaxies.
FOV_FACTOR = 1.5
#: Field of view used when the catalog gives no size (a typical SDSS-resolved galaxy).
DEFAULT_FOV_ARCMIN = 2.0
_MIN_FOV_ARCMIN = 0.25
_MAX_SUGGESTIONS = 5


class CatalogObject(BaseModel):
    """One OpenNGC object, with positions in degrees and sizes in arcmin."""

    model_config = ConfigDict(frozen=True)

    name: str
    """OpenNGC's primary name, e.g. ``NGC0224``."""
    type: str
    """OpenNGC type code, e.g. ``G``, ``PN``, ``HII``."""
    type_name: str
    """Readable type, e.g. ``Galaxy``."""
    ra_deg: float | None
    dec_deg: float | None
    majax_arcmin: float | None = None
    minax_arcmin: float | None = None
    pa_deg: float | None = None
    """Position angle of the major axis, degrees east of north."""
    hubble: str | None = None
    constellation: str | None = None
    identifiers: list[str] = Field(default_factory=list)
    """Every other name: NGC/IC, Messier, PGC, UGC, MCG, ESO, 2MASX, ..., common names."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def axis_ratio(self) -> float | None:
        """Minor over major axis, ``q = b/a`` in (0, 1]; ``None`` if either is unknown."""
        if not self.majax_arcmin or not self.minax_arcmin:
            return None
        return min(self.minax_arcmin / self.majax_arcmin, 1.0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pgc(self) -> int | None:
        """The PGC (= LEDA) number, if the object has one."""
        for ident in self.identifiers:
            match = re.fullmatch(r"PGC\s*0*(\d+)", ident)
            if match:
                return int(match.group(1))
        return None

    def classical_inclination_deg(self, q0: float = 0.2) -> float | None:
        """Inclination from the axis ratio, ``cos² i = (q² − q0²) / (1 − q0²)``.

        The textbook baseline a CNN should beat; ``None`` without both axes.
        """
        q = self.axis_ratio
        if q is None:
            return None
        cos2 = (q * q - q0 * q0) / (1.0 - q0 * q0)
        return math.degrees(math.acos(math.sqrt(min(max(cos2, 0.0), 1.0))))


# --------------------------------------------------------------------------- names

_SPACES = re.compile(r"[\s_'’`\"]+")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_MESSIER = re.compile(r"(?:MESSIER|M)(\d{1,3})")
_PRETTY = re.compile(r"(NGC|IC|PGC|UGCA|UGC|HCG|MWSC|MEL|LBN|CL|B|C|H)\s?0*(\d+)(.*)")


def normalise_identifier(text: str) -> str:
    """Reduce a name to the key the indexes use: ``"PGC 002557"`` → ``"PGC2557"``.

    Upper case, no spaces, underscores or quotes, no leading zeros in numbers;
    ``Messier 31``/``M 031`` → ``M31``; ``LEDA n`` and a bare number → ``PGCn``.
    Common names reduce the same way (``"Bode's Galaxy"`` → ``"BODESGALAXY"``).
    """
    key = _SPACES.sub("", unicodedata.normalize("NFKC", text).upper())
    key = _LEADING_ZEROS.sub("", key)
    if key.isdigit():
        return f"PGC{key}"
    if key.startswith("LEDA") and key[4:].isdigit():
        return f"PGC{key[4:]}"
    messier = _MESSIER.fullmatch(key)
    if messier:
        return f"M{messier.group(1)}"
    return key


def _pretty(ident: str) -> str:
    """``NGC0224`` → ``NGC 224``, ``PGC 002557`` → ``PGC 2557``; others unchanged."""
    match = _PRETTY.fullmatch(ident.strip())
    if not match:
        return ident.strip()
    return f"{match.group(1)} {int(match.group(2))}{match.group(3)}"


def field_of_view_arcmin(
    obj: CatalogObject,
    *,
    factor: float = FOV_FACTOR,
    default_arcmin: float = DEFAULT_FOV_ARCMIN,
) -> float:
    """The side of the cutout the models see: ``factor`` × major axis (IncliNET's 1.5·D25).

    Objects without a catalogued size get ``default_arcmin``; tiny ones are kept at
    least a quarter arcminute so the crop still holds a few seeing discs.
    """
    if not obj.majax_arcmin or obj.majax_arcmin <= 0:
        return default_arcmin
    return max(factor * obj.majax_arcmin, _MIN_FOV_ARCMIN)


# --------------------------------------------------------------------------- database


def default_db_path() -> Path:
    """Where the installed ``pyongc`` wheel keeps ``ongc.db`` (used in place, never copied)."""
    return Path(str(resources.files("pyongc").joinpath("ongc.db")))


@dataclass(frozen=True)
class _Indexes:
    rows: dict[str, tuple[Any, ...]]  # primary name -> database row (objects are built on demand)
    aliases: dict[str, list[str]]  # primary name -> objIdentifiers entries
    keys: dict[str, str]  # normalised identifier -> primary name
    display: dict[str, str]  # normalised identifier -> how to show it in suggestions
    buckets: dict[str, list[str]]  # first character -> normalised identifiers, for suggestions
    names: list[str]  # primary names aligned with the position arrays
    ra_rad: np.ndarray
    dec_rad: np.ndarray
    types: np.ndarray


_COLUMNS = (
    "o.name, o.type, t.typedesc, o.ra, o.dec, o.const, o.majax, o.minax, o.pa, o.hubble, "
    "o.messier, o.ngc, o.ic, o.identifiers, o.commonnames"
)


class Resolver:
    """Name, identifier and position lookups over OpenNGC.

    Parameters
    ----------
    db_path
        The OpenNGC SQLite file; defaults to the one inside the ``pyongc`` package.

    Notes
    -----
    Nothing is read at construction. The first lookup opens the file read-only,
    builds every index (about half a second), closes it, and keeps the indexes;
    the build is guarded by a lock so concurrent first calls build once.
    """

    def __init__(self, db_path: Path | str | None = None) -> None:
        self.db_path = Path(db_path) if db_path is not None else default_db_path()
        self._indexes: _Indexes | None = None
        self._objects: dict[str, CatalogObject] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ building
    def _index(self) -> _Indexes:
        if self._indexes is None:
            with self._lock:
                if self._indexes is None:
                    self._indexes = self._build()
        return self._indexes

    def _build(self) -> _Indexes:
        if not self.db_path.is_file():
            raise FileNotFoundError(f"OpenNGC database not found at {self.db_path}")
        uri = f"{self.db_path.resolve().as_uri()}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM objects o JOIN objTypes t ON o.type = t.type"
            ).fetchall()
            extra_ids = conn.execute("SELECT name, identifier FROM objIdentifiers").fetchall()
        finally:
            conn.close()

        by_name = {row[0]: row for row in rows}
        aliases: dict[str, list[str]] = {}
        for name, ident in extra_ids:
            aliases.setdefault(name, []).append(ident)
        messier_primary = {int(row[10]): row[0] for row in rows if row[10] and row[1] != "Dup"}

        def primary_of(name: str) -> str:
            # Dup rows point at their primary through the ngc/ic/messier columns.
            for _ in range(4):
                row = by_name[name]
                if row[1] != "Dup":
                    return name
                target = None
                if row[11]:
                    target = f"NGC{row[11]}"
                elif row[12]:
                    target = f"IC{row[12]}"
                elif row[10]:
                    target = messier_primary.get(int(row[10]))
                if target is None or target not in by_name:
                    return name
                name = target
            return name

        keys: dict[str, str] = {}
        display: dict[str, str] = {}

        def add(label: str, primary: str) -> None:
            key = normalise_identifier(label)
            if key and key not in keys:  # first writer wins: primary names come first
                keys[key] = primary
                display[key] = _pretty(label)

        for row in rows:  # 1. every object's own name (Dups forward to their primary)
            add(row[0], primary_of(row[0]))
        for row in rows:  # 2. Messier numbers and NGC/IC cross names
            primary = primary_of(row[0])
            if row[10]:
                add(f"M{int(row[10])}", primary)
        for name, idents in aliases.items():  # 3. the objIdentifiers table
            for ident in idents:
                add(ident, primary_of(name))
        for row in rows:  # 4. the identifiers column, then common names
            primary = primary_of(row[0])
            for ident in _split(row[13]):
                add(ident, primary)
        for row in rows:
            for common in _split(row[14]):
                add(common, primary_of(row[0]))

        primaries = {row[0]: row for row in rows if row[1] != "Dup" or primary_of(row[0]) == row[0]}
        buckets: dict[str, list[str]] = {}
        for key in keys:
            buckets.setdefault(key[0], []).append(key)
        placed = [row for row in primaries.values() if row[3] is not None and row[4] is not None]
        return _Indexes(
            rows=primaries,
            aliases=aliases,
            keys=keys,
            display=display,
            buckets=buckets,
            names=[row[0] for row in placed],
            ra_rad=np.array([row[3] for row in placed], dtype=np.float64),
            dec_rad=np.array([row[4] for row in placed], dtype=np.float64),
            types=np.array([row[1] for row in placed]),
        )

    def _object(self, name: str) -> CatalogObject:
        obj = self._objects.get(name)
        if obj is None:
            index = self._index()
            obj = _make_object(index.rows[name], index.aliases.get(name, []))
            self._objects[name] = obj  # a racing duplicate build is harmless
        return obj

    # ------------------------------------------------------------------ lookups
    def resolve(self, query: str | int) -> CatalogObject:
        """Find an object by any of its names.

        Parameters
        ----------
        query
            ``2557``, ``"PGC 2557"``, ``"PGC002557"``, ``"LEDA 2557"``, ``"NGC 224"``,
            ``"ngc0224"``, ``"IC 1101"``, ``"M31"``, ``"Messier 31"``, ``"UGC 454"``,
            ``"MCG +07-02-016"``, ``"ESO 545-008"``, ``"2MASX J00424433+4116074"``,
            ``"Andromeda Galaxy"`` … case and spacing do not matter. Duplicate
            entries resolve to their primary object.

        Raises
        ------
        InvalidRequest
            Empty query.
        UnknownTarget
            No match; ``extra["suggestions"]`` lists up to five close names.
        """
        text = str(query).strip()
        if not text:
            raise InvalidRequest("Give an object name or number, e.g. 'NGC 224' or 'PGC 2557'.")
        index = self._index()
        key = normalise_identifier(text)
        primary = index.keys.get(key)
        if primary is None:
            suggestions = self.suggest(text)
            hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
            raise UnknownTarget(
                f"No object named {text!r} in OpenNGC (NGC/IC/Messier objects and the "
                f"galaxies cross-listed there).{hint}",
                query=text,
                suggestions=suggestions,
            )
        return self._object(primary)

    def resolve_pgc(self, pgc: int) -> CatalogObject:
        """Find an object by its PGC (LEDA) number.

        Raises
        ------
        InvalidRequest
            Not a positive integer.
        UnknownTarget
            The number is not in OpenNGC.
        """
        if isinstance(pgc, bool) or not isinstance(pgc, int) or pgc <= 0:
            raise InvalidRequest(f"A PGC number is a positive integer, got {pgc!r}.")
        obj = self.get(f"PGC {pgc}")
        if obj is None:
            # No "Did you mean": HyperLEDA numbers about three million galaxies and
            # OpenNGC lists only those with an NGC/IC/Messier entry, so a missing number
            # is almost never a typo, and its look-alikes (PGC 81 for PGC 1) mislead.
            raise UnknownTarget(
                f"PGC {pgc} is not in OpenNGC, which knows only the PGC galaxies that also "
                "have an NGC, IC or Messier entry. Give its position instead (ra and dec), "
                "or upload an image of it.",
                query=f"PGC {pgc}",
                suggestions=[],
            )
        return obj

    def get(self, name: str) -> CatalogObject | None:
        """Like :meth:`resolve`, but ``None`` instead of an error (and no suggestions)."""
        index = self._index()
        primary = index.keys.get(normalise_identifier(name))
        return self._object(primary) if primary else None

    def suggest(self, query: str, *, limit: int = _MAX_SUGGESTIONS) -> list[str]:
        """Up to ``limit`` known names closest to ``query`` (difflib ratio ≥ 0.6)."""
        index = self._index()
        key = normalise_identifier(query)
        if not key:
            return []
        # Only names sharing the first character: 100x faster than all 65k, and a
        # typo in the first character is rare (this runs on every unknown name).
        candidates = index.buckets.get(key[0], [])
        matches = difflib.get_close_matches(key, candidates, n=limit * 3, cutoff=0.6)
        seen: set[str] = set()
        out: list[str] = []
        for match in matches:
            primary = index.keys[match]
            if primary in seen:  # one suggestion per object
                continue
            seen.add(primary)
            out.append(index.display[match])
            if len(out) == limit:
                break
        return out

    def cone_search(
        self,
        ra_deg: float,
        dec_deg: float,
        radius_arcmin: float = 10.0,
        *,
        types: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[tuple[CatalogObject, float]]:
        """Objects within ``radius_arcmin`` of a position, nearest first.

        Parameters
        ----------
        ra_deg, dec_deg
            ICRS position in degrees (see :func:`parse_coordinates`).
        radius_arcmin
            Search radius.
        types
            Keep only these OpenNGC type codes (e.g. ``{"G"}`` for galaxies).
        limit
            Return at most this many.

        Returns
        -------
        list of (CatalogObject, separation in arcmin)
        """
        if not radius_arcmin > 0:
            raise InvalidRequest(f"The search radius must be positive, got {radius_arcmin!r}.")
        position = parse_coordinates(ra_deg, dec_deg)
        index = self._index()
        ra0, dec0 = math.radians(position.ra_deg), math.radians(position.dec_deg)
        # Haversine: well conditioned at the tiny separations a cone search is about.
        hav = (
            np.sin((index.dec_rad - dec0) / 2) ** 2
            + math.cos(dec0) * np.cos(index.dec_rad) * np.sin((index.ra_rad - ra0) / 2) ** 2
        )
        sep_arcmin = np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0)))) * 60.0
        mask = sep_arcmin <= radius_arcmin
        if types is not None:
            mask &= np.isin(index.types, list(types))
        hits = np.flatnonzero(mask)
        hits = hits[np.argsort(sep_arcmin[hits], kind="stable")]
        if limit is not None:
            hits = hits[:limit]
        return [(self._object(index.names[i]), float(sep_arcmin[i])) for i in hits]

    def nearest(
        self,
        ra_deg: float,
        dec_deg: float,
        max_arcmin: float = 5.0,
        *,
        types: Collection[str] | None = None,
    ) -> tuple[CatalogObject, float] | None:
        """The closest object within ``max_arcmin``, with its separation, or ``None``."""
        found = self.cone_search(ra_deg, dec_deg, max_arcmin, types=types, limit=1)
        return found[0] if found else None

    parse_coordinates = staticmethod(parse_coordinates)
    field_of_view_arcmin = staticmethod(field_of_view_arcmin)

    def __len__(self) -> int:
        return len(self._index().rows)


def _split(field: str | None) -> Iterable[str]:
    return [part.strip() for part in (field or "").split(",") if part.strip()]


def _make_object(row: tuple[Any, ...], aliases: list[str]) -> CatalogObject:
    (
        name,
        type_,
        typedesc,
        ra,
        dec,
        const,
        majax,
        minax,
        pa,
        hubble,
        messier,
        ngc,
        ic,
        identifiers,
        commonnames,
    ) = row
    labels: list[str] = [_pretty(name)]
    if messier:
        labels.append(f"M{int(messier)}")
    labels += [f"NGC {int(n)}" for n in _split(ngc) if n.isdigit()]
    labels += [f"IC {int(n)}" for n in _split(ic) if n.isdigit()]
    labels += [_pretty(a) for a in aliases]
    labels += [_pretty(i) for i in _split(identifiers)]
    labels += list(_split(commonnames))
    seen = {normalise_identifier(name)}
    unique: list[str] = []
    for label in labels[1:]:
        key = normalise_identifier(label)
        if key not in seen:
            seen.add(key)
            unique.append(label)
    return CatalogObject(
        name=name,
        type=type_,
        type_name=typedesc,
        ra_deg=math.degrees(ra) if ra is not None else None,
        dec_deg=math.degrees(dec) if dec is not None else None,
        majax_arcmin=majax,
        minax_arcmin=minax,
        pa_deg=float(pa) if pa is not None else None,
        hubble=hubble or None,
        constellation=const or None,
        identifiers=unique,
    )


@lru_cache(maxsize=4)
def get_resolver(db_path: Path | str | None = None) -> Resolver:
    """The process-wide :class:`Resolver` (one per database file), built lazily."""
    return Resolver(db_path)
