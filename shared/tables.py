"""Tables of answers in the formats astronomers read: CSV, JSON, ECSV, FITS, VOTable, Parquet.

The API writes batch results with it and the client writes ``--out`` files with it, so
a FITS table from either is the same kind of file. Rows arrive as plain values (text
for the caller's own columns, numbers for answers, ``""``/``None`` where there is no
value); :func:`build_table` gives each column one type (integer, float or text), with
missing numbers masked, and :func:`table_bytes` writes it. ECSV, FITS, VOTable and the
tables' CSV/JSON go through ``astropy.table``; Parquet through ``pyarrow``, imported
only when asked for.
"""

from __future__ import annotations

import io
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EXTENSIONS",
    "MEDIA_TYPES",
    "TABLE_FORMATS",
    "ascii_text",
    "build_table",
    "format_for_path",
    "table_bytes",
]

#: Every format a table can be written in, in the order the docs list them.
TABLE_FORMATS = ("csv", "json", "ecsv", "fits", "votable", "parquet")
MEDIA_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "ecsv": "text/x-ecsv",
    "fits": "application/fits",
    "votable": "application/x-votable+xml",
    "parquet": "application/vnd.apache.parquet",
}
#: The file extension each format is written with.
EXTENSIONS = {
    "csv": ".csv",
    "json": ".json",
    "ecsv": ".ecsv",
    "fits": ".fits",
    "votable": ".vot",
    "parquet": ".parquet",
}
_BY_SUFFIX = {
    ".csv": "csv",
    ".json": "json",
    ".ecsv": "ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_]")
#: Spellings of the symbols skyserve's own messages use, for FITS (ASCII only).
_ASCII_SPELLINGS = str.maketrans(
    {"−": "-", "–": "-", "—": "-", "≤": "<=", "≥": ">=", "×": "x", "±": "+/-", "°": " deg",
     "′": "'", "″": '"', "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "→": "->"}
)  # fmt: skip


def format_for_path(path: str | Path) -> str:
    """The format a file name asks for by its extension.

    Raises
    ------
    ValueError
        For an extension that names none of :data:`TABLE_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    try:
        return _BY_SUFFIX[suffix]
    except KeyError:
        known = ", ".join(sorted(_BY_SUFFIX))
        raise ValueError(
            f"Cannot tell the format of {str(path)!r} from its extension; use one of {known}."
        ) from None


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _kind(values: Sequence[Any]) -> str:
    """``int``, ``float`` or ``str``: the narrowest type every present value has."""
    present = [v for v in values if not _missing(v)]
    if not present:
        return "str"
    if all(isinstance(v, bool) for v in present):
        return "str"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "str"


def _text_kind(values: Sequence[Any]) -> str:
    """For text columns sent by a user: numeric when every value reads as a number."""
    present = [v for v in values if not _missing(v)]
    if not present or not all(isinstance(v, str) for v in present):
        return _kind(values)
    if all(re.fullmatch(r"[+-]?[0-9]+", v.strip()) for v in present):
        return "int"
    try:
        numbers = [float(v) for v in present]
    except ValueError:
        return "str"
    return "float" if all(math.isfinite(n) for n in numbers) else "str"


def build_table(
    names: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    text_columns: Iterable[str] = (),
    keep_text: Iterable[str] = (),
    units: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Any:
    """An ``astropy.table.Table`` with one type per column and masked missing numbers.

    Parameters
    ----------
    names
        Column names, in order.
    rows
        Rows of values in the order of ``names``.
    text_columns
        Columns whose values came in as text (a user's catalog): they become numbers
        when every value reads as one, so ``ra``/``dec`` are numeric in a FITS table.
    keep_text
        Columns that stay text whatever they hold (identifiers such as ``007``).
    units, descriptions
        Per-column unit (astropy unit string, e.g. ``deg``) and description.
    meta
        Table metadata (ECSV header, FITS header keywords, VOTable INFO).
    """
    import numpy as np
    from astropy.table import MaskedColumn, Table

    data = list(rows)
    columns = list(zip(*data, strict=True)) if data else [() for _ in names]
    text, keep = set(text_columns), set(keep_text)
    units, descriptions = units or {}, descriptions or {}
    table = Table(meta=dict(meta or {}))
    for name, values in zip(names, columns, strict=True):
        kind = "str" if name in keep else _text_kind(values) if name in text else _kind(values)
        mask = [_missing(v) for v in values]
        if kind == "str":
            col = MaskedColumn(
                ["" if m else str(v) for v, m in zip(values, mask, strict=True)] or np.array([], "U1"),
                name=name,
            )
        else:
            dtype = np.int64 if kind == "int" else np.float64
            filled = [0 if m else (int(v) if kind == "int" else float(v)) for v, m in zip(values, mask, strict=True)]
            col = MaskedColumn(np.array(filled, dtype=dtype), name=name, mask=mask or None)
            if not any(mask):
                col = col.filled()  # a plain column: nothing to mask
                col.name = name
        if name in units:
            col.unit = units[name]
        if name in descriptions:
            col.description = descriptions[name]
        table.add_column(col)
    return table


def _safe_names(table: Any) -> Any:
    """FITS and VOTable want names of letters, digits and ``_`` (``object-type`` → ``object_type``)."""
    out = table.copy(copy_data=False)
    seen: set[str] = set()
    for name in list(out.colnames):
        safe = _SAFE_NAME.sub("_", name) or "col"
        while safe in seen:
            safe += "_"
        seen.add(safe)
        if safe != name:
            out.rename_column(name, safe)
    return out


def ascii_text(text: str) -> str:
    """``text`` in ASCII: symbols spelled out, accents dropped, anything else ``?``.

    FITS tables and headers hold ASCII only; a user's ``Sérsic`` or an error saying
    ``−90 ≤ Dec`` would otherwise stop the whole table from being written.
    """
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_SPELLINGS))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.encode("ascii", "replace").decode("ascii")


def _ascii_table(table: Any) -> Any:
    """A copy of ``table`` whose text columns and metadata are ASCII (see :func:`ascii_text`)."""
    import numpy as np
    from astropy.table import MaskedColumn

    out = table.copy(copy_data=False)
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind != "U":
            continue
        values = [ascii_text(str(v)) for v in np.asarray(col)]
        if values == [str(v) for v in np.asarray(col)]:
            continue
        new = MaskedColumn(values or np.array([], "U1"), name=name, mask=getattr(col, "mask", None))
        new.unit, new.description = col.unit, col.description
        out.replace_column(name, new)
    out.meta = {
        ascii_text(str(k)): ascii_text(v) if isinstance(v, str) else v for k, v in out.meta.items()
    }
    return out


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_bytes(table: Any, fmt: str) -> bytes:
    """Write ``table`` (from :func:`build_table`) in ``fmt``, one of :data:`TABLE_FORMATS`.

    Raises
    ------
    ValueError
        For an unknown format.
    ImportError
        For ``parquet`` without pyarrow installed (with what to install).
    """
    if fmt == "csv":
        buffer = io.StringIO()
        table.write(buffer, format="ascii.csv", fill_values=[("", "")])
        return buffer.getvalue().encode()
    if fmt == "json":
        import numpy as np

        masks = {
            name: np.asarray(getattr(table[name], "mask", False), dtype=bool)
            & np.ones(len(table), dtype=bool)
            for name in table.colnames
        }
        data = {
            name: table[name].filled() if hasattr(table[name], "filled") else table[name]
            for name in table.colnames
        }
        rows = [
            {name: None if masks[name][i] else _json_value(data[name][i]) for name in table.colnames}
            for i in range(len(table))
        ]
        return (json.dumps(rows, indent=1) + "\n").encode()
    if fmt == "ecsv":
        buffer = io.StringIO()
        table.write(buffer, format="ascii.ecsv")
        return buffer.getvalue().encode()
    if fmt in ("fits", "votable"):
        binary = io.BytesIO()
        safe = _safe_names(table)
        (_ascii_table(safe) if fmt == "fits" else safe).write(binary, format=fmt)
        return binary.getvalue()
    if fmt == "parquet":
        return _parquet(table)
    raise ValueError(f"Unknown table format {fmt!r}; use one of {', '.join(TABLE_FORMATS)}.")


def _parquet(table: Any) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # the client may run without it
        raise ImportError(
            "Writing Parquet needs pyarrow: pip install pyarrow (or the project's api extra)."
        ) from exc
    import numpy as np

    arrays, fields = [], []
    for name in table.colnames:
        col = table[name]
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
        values = np.asarray(col.filled() if hasattr(col, "filled") else col)
        if values.dtype.kind in "US":
            values = values.astype(str).astype(object)
        array = pa.array(values, mask=mask if mask.any() else None)
        meta = {}
        if col.unit is not None:
            meta[b"unit"] = str(col.unit).encode()
        if col.description:
            meta[b"description"] = str(col.description).encode()
        arrays.append(array)
        fields.append(pa.field(name, array.type, metadata=meta or None))
    schema = pa.schema(
        fields, metadata={b"skyserve": json.dumps(dict(table.meta), default=str).encode()}
    )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), buffer)
    return buffer.getvalue()
