"""Reading a submitted catalog row by row into stored chunks, never all at once.

A CSV of 100,000 rows is read from the spooled upload one line at a time; rows are
checked for shape only (the worker resolves names and fetches images) and written
to Redis a chunk at a time, so the API's memory does not grow with the catalog.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import IO, Any

from shared.batchstore import BatchStore
from shared.errors import ImageTooLarge, InvalidRequest, SkyserveError
from shared.schemas import BatchRow, Problem
from shared.targets import LOCATOR_COLUMNS, row_locator

__all__ = ["csv_rows", "json_rows", "zip_rows", "ingest", "parse_json_body"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".fits", ".fit"}
_EXTRA = "\0extra"


class _RowError(SkyserveError):
    code, status, title = "invalid-row", 422, "This catalog row cannot be used"


def _problem(detail: str) -> Problem:
    return Problem.model_validate(_RowError(detail).to_problem())


def csv_rows(stream: IO[bytes]) -> tuple[list[str], Iterator[tuple[dict[str, str], str | None]]]:
    """Parse a CSV upload lazily.

    Returns
    -------
    (columns, rows)
        ``rows`` yields ``(values, problem)`` where ``problem`` describes a malformed row.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.DictReader(text, restkey=_EXTRA)
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise InvalidRequest(f"The CSV header cannot be read: {exc}") from exc
    if not columns:
        raise InvalidRequest("The catalog is empty: it needs a header row and at least one row.")
    reader.fieldnames = columns

    def rows() -> Iterator[tuple[dict[str, str], str | None]]:
        while True:
            try:
                raw = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield {}, f"Line {reader.line_num} is not valid CSV: {exc}."
                continue
            extra = raw.pop(_EXTRA, None)
            missing = [k for k, v in raw.items() if v is None]
            values = {k: (v or "").strip() for k, v in raw.items()}
            if extra is not None:
                yield values, (
                    f"Line {reader.line_num} has {len(columns) + len(extra)} fields; "
                    f"the header has {len(columns)}."
                )
            elif missing:
                yield values, (
                    f"Line {reader.line_num} has {len(columns) - len(missing)} fields; "
                    f"the header has {len(columns)}."
                )
            else:
                yield values, None

    return columns, rows()


def json_rows(items: Any) -> tuple[list[str], Iterator[tuple[dict[str, str], str | None]]]:
    """Rows from a JSON list of objects (or ``{"rows": [...]}``)."""
    if isinstance(items, dict):
        items = items.get("rows")
    if not isinstance(items, list) or not items:
        raise InvalidRequest('Send a JSON list of row objects, or {"rows": [...]} with at least one row.')
    columns: list[str] = []
    for item in items:
        if isinstance(item, dict):
            columns.extend(k for k in item if k not in columns)

    def rows() -> Iterator[tuple[dict[str, str], str | None]]:
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                yield {}, f"Row {n} is a {type(item).__name__}, not an object."
                continue
            yield {str(k): "" if v is None else str(v) for k, v in item.items()}, None

    return columns, rows()


def zip_rows(
    archive: zipfile.ZipFile, *, store: BatchStore, batch_id: str, max_file_bytes: int, max_total_bytes: int
) -> tuple[list[str], Iterator[tuple[dict[str, str], str | None]], set[str]]:
    """Store a zip's images and return its rows: ``catalog.csv`` inside, else one row per image.

    Returns
    -------
    (columns, rows, image_names)

    Raises
    ------
    ImageTooLarge
        If the archive would unpack past ``max_total_bytes`` (a zip bomb) .
    """
    members = [i for i in archive.infolist() if not i.is_dir()]
    total = sum(i.file_size for i in members)
    if total > max_total_bytes:
        raise ImageTooLarge(
            f"The zip unpacks to {total:,} bytes; the limit is {max_total_bytes:,}.",
            max_bytes=max_total_bytes,
        )
    images = {}
    catalog = None
    for info in members:
        name = PurePosixPath(info.filename)
        if name.name.lower() == "catalog.csv":
            catalog = info
        elif name.suffix.lower() in _IMAGE_SUFFIXES and not name.name.startswith("."):
            if info.file_size > max_file_bytes:
                continue  # its row fails below with the reason
            store.put_file(batch_id, info.filename, archive.read(info))
            images[info.filename] = info
    if catalog is not None:
        columns, rows = csv_rows(archive.open(catalog))
        return columns, rows, set(images)
    if not images:
        raise InvalidRequest(
            "The zip holds no images (PNG, JPEG, GIF, TIFF, WebP, BMP, FITS) and no catalog.csv."
        )
    rows = iter(({"id": PurePosixPath(n).stem, "file": n}, None) for n in sorted(images))
    return ["id", "file"], rows, set(images)


def ingest(
    rows: Iterable[tuple[dict[str, str], str | None]],
    *,
    store: BatchStore,
    batch_id: str,
    columns: list[str],
    id_column: str,
    chunk_rows: int,
    max_rows: int,
    zip_files: set[str] | None = None,
) -> tuple[int, int]:
    """Check each row's shape and store the rows in chunks.

    Returns
    -------
    (rows, chunks)

    Raises
    ------
    InvalidRequest
        If the header names no target column, there are no rows, or too many.
    """
    if not any(c in columns for c in LOCATOR_COLUMNS):
        raise InvalidRequest(
            "The catalog has no column that says what to look at. Add one of: "
            "image_url, file, pgc, name, or ra and dec.",
            columns=columns,
        )
    chunk: list[BatchRow] = []
    count = chunks = 0
    for values, problem in rows:
        if count >= max_rows:
            raise InvalidRequest(f"The catalog has more than {max_rows:,} rows; split it.")
        if problem is None:
            kind = row_locator(values)
            if kind is None:
                problem = "The row names no target: fill image_url, file, pgc, name, or ra and dec."
            elif kind == "file" and zip_files is not None and values["file"] not in zip_files:
                problem = f"The zip holds no image named {values['file']!r} (or it was too large)."
        chunk.append(
            BatchRow(
                row=count,
                id=values.get(id_column) or None,
                input=values,
                error=_problem(problem) if problem else None,
            )
        )
        count += 1
        if len(chunk) == chunk_rows:
            store.put_chunk(batch_id, chunks, chunk)
            chunks, chunk = chunks + 1, []
    if chunk:
        store.put_chunk(batch_id, chunks, chunk)
        chunks += 1
    if count == 0:
        raise InvalidRequest("The catalog has a header but no rows.")
    return count, chunks


def parse_json_body(data: bytes) -> Any:
    """Decode a JSON request body with a readable error."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from exc
