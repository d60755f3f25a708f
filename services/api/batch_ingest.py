"""Reading a submitted catalog row by row into stored chunks, never all at once.

A CSV of 100,000 rows is read from the spooled upload one line at a time; rows are
checked for shape only (the worker resolves names and fetches images) and written
to Redis a chunk at a time, so the API's memory does not grow with the catalog.
JSON catalogs are read the same way, one row object at a time (:func:`json_source`),
never parsed whole. A zip is checked entry by entry before anything is unpacked:
entry count, declared sizes, compression ratio, encryption and compression method;
a corrupt entry is a ``422`` that names it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import IO, Any

from shared.batchstore import BatchStore
from shared.errors import (
    ImageTooLarge,
    InvalidRequest,
    RequestTooLarge,
    SkyserveError,
    UnsupportedMediaType,
)
from shared.schemas import BatchRow, Problem
from shared.targets import LOCATOR_COLUMNS, row_locator, target_fields

__all__ = [
    "csv_rows",
    "json_rows",
    "json_source",
    "open_zip",
    "zip_rows",
    "ingest",
    "parse_json_body",
    "ZIP_ERRORS",
    "require_locator",
    "check_zip",
    "id_column_of",
    "refuse_non_text",
]

#: What zipfile raises on a broken archive or entry (bad CRC, truncation, unknown methods).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,  # "File ... is encrypted, password required"
)
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
#: Entries smaller than this are never called bombs, whatever their ratio (a CSV of
#: repeated ids compresses well).
_RATIO_FLOOR = 1024 * 1024
#: Largest single JSON value (a row object, the task list) read at once.
_MAX_JSON_ITEM = 1024 * 1024

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".fits", ".fit"}
_EXTRA = "\0extra"


class _RowError(SkyserveError):
    code, status, title = "invalid-row", 422, "This catalog row cannot be used"


def _problem(detail: str) -> Problem:
    return Problem.model_validate(_RowError(detail).to_problem())


#: Leading bytes of files people send as a catalog by mistake, and what they are.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"SIMPLE  =", "a FITS file"),
    (b"PK\x03\x04", "a zip file"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
    (b"RIFF", "a RIFF (WebP, WAV) file"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
)


def refuse_non_text(stream: IO[bytes], *, what: str = "The catalog") -> None:
    """Refuse a catalog that is not text before it is parsed as CSV (a 415 that says
    what the file looks like and what is expected), leaving the stream where it was.

    Raises
    ------
    UnsupportedMediaType
    """
    start = stream.tell()
    head = stream.read(4096)
    stream.seek(start)
    found = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if found is None and b"\x00" in head:
        found = "a binary file"  # BMP, Parquet, UTF-16 text, executables ...
    if found is None:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A cut in the middle of a character at the end of the sample is fine.
            if exc.start < len(head) - 3:
                found = "not UTF-8 text"
    if found is not None:
        hint = (
            " To send images, put them in a zip uploaded as multipart/form-data "
            "(-F file=@images.zip)."
            if found != "not UTF-8 text"
            else ""
        )
        raise UnsupportedMediaType(
            f"{what} looks like {found}, not a CSV. Send a CSV in UTF-8 with a header row "
            "naming a target column (image_url, file, pgc, name, or ra and dec), a JSON "
            f'list of rows, or a zip of images.{hint}'
        )


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


class _JsonStream:
    """Reads one JSON value at a time from a byte stream, with at most one value in memory."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict")
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = self._text.read(64 * 1024)
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The JSON is not UTF-8: {exc}") from None
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, char: str, where: str) -> None:
        found = self.peek()
        if found != char:
            shown = repr(found) if found else "the end of the file"
            raise InvalidRequest(f"The JSON is malformed: expected {char!r} {where}, found {shown}.")
        self._pos += 1

    def value(self) -> Any:
        """Decode the next value, reading more of the stream until it is complete."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos > _MAX_JSON_ITEM:
                    raise RequestTooLarge(
                        f"A value in the JSON is larger than {_MAX_JSON_ITEM:,} bytes; rows "
                        "must be small objects.", max_bytes=_MAX_JSON_ITEM,
                    ) from None
                if not self._fill():
                    raise InvalidRequest(f"The JSON is malformed: {exc.msg} (at character {exc.pos}).") from None
                continue
            # A number that ends the buffer may go on in the next read ("12" | "34").
            if end == len(self._buf) and not self._eof and self._fill():
                continue
            self._pos = end
            return value

    def array(self, where: str) -> Iterator[Any]:
        """The items of the array that starts here, one at a time."""
        self.expect("[", where)
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.value()
            if self.peek() == ",":
                self._pos += 1
                continue
            self.expect("]", f"after an item {where}")
            return

    def release(self) -> None:
        """Let go of the byte stream without closing it (a second pass reads it again)."""
        self._text.detach()

    def end(self) -> None:
        if self.peek():
            raise InvalidRequest("The JSON has more after its end; send one object or one list.")


def json_source(
    stream: IO[bytes],
) -> tuple[dict[str, Any], list[str], Iterator[tuple[dict[str, str], str | None]]]:
    """A JSON catalog — a list of row objects, or ``{"rows": [...], ...}`` — read lazily.

    The stream must be seekable (the spooled upload): a first pass collects the
    columns and the other members (``tasks``, ``versions``, ``id_column``), a second
    yields the rows. Neither holds more than one row in memory.

    Returns
    -------
    (options, columns, rows)
        ``options`` holds the object's members other than ``rows``; ``rows`` yields
        ``(values, problem)`` like :func:`csv_rows`.

    Raises
    ------
    InvalidRequest, RequestTooLarge
        Not JSON, not a list or an object with ``rows``, or a single value over 1 MB.
    """
    start = stream.tell()
    options: dict[str, Any] = {}
    columns: list[str] = []
    seen: set[str] = set()
    count = 0
    for item in _json_items(stream, options):
        if not isinstance(item, dict):
            # A row of a JSON catalog is an object by the document's own grammar; a bare
            # number or list is a broken document, not one unusable row.
            raise InvalidRequest(
                f"Row {count} is a {type(item).__name__}, not an object: every row is "
                '{"column": value, ...}.'
            )
        count += 1
        for key in item:
            if key not in seen:
                seen.add(key)
                columns.append(str(key))
    if count == 0:
        raise InvalidRequest('Send a JSON list of row objects, or {"rows": [...]} with at least one row.')

    def rows() -> Iterator[tuple[dict[str, str], str | None]]:
        stream.seek(start)
        for n, item in enumerate(_json_items(stream, {})):
            if not isinstance(item, dict):
                yield {}, f"Row {n} is a {type(item).__name__}, not an object."
                continue
            yield {str(k): "" if v is None else str(v) for k, v in item.items()}, None

    return options, columns, rows()


def _json_items(stream: IO[bytes], options: dict[str, Any]) -> Iterator[Any]:
    reader = _JsonStream(stream)
    try:
        yield from _json_document(reader, options)
    finally:
        reader.release()


def _json_document(reader: _JsonStream, options: dict[str, Any]) -> Iterator[Any]:
    first = reader.peek()
    if first == "[":
        yield from reader.array("at the start of the row list")
    elif first == "{":
        reader.expect("{", "")
        found_rows = False
        while reader.peek() != "}":
            key = reader.value()
            if not isinstance(key, str):
                raise InvalidRequest("The JSON is malformed: an object key is not a string.")
            reader.expect(":", f"after the key {key[:40]!r}")
            if key == "rows":
                found_rows = True
                if reader.peek() != "[":
                    raise InvalidRequest('"rows" must be a list of row objects.')
                yield from reader.array('in "rows"')
            else:
                options[key] = reader.value()
            if reader.peek() == ",":
                reader.expect(",", "")
        reader.expect("}", "at the end of the object")
        if not found_rows:
            raise InvalidRequest('The JSON object has no "rows": send {"rows": [{...}, ...]}.')
    else:
        raise InvalidRequest('Send a JSON list of row objects, or {"rows": [...]}.')
    reader.end()


def open_zip(source: IO[bytes]) -> zipfile.ZipFile:
    """Open an uploaded zip, or say clearly why it is not one.

    Raises
    ------
    InvalidRequest
    """
    try:
        return zipfile.ZipFile(source)
    except ZIP_ERRORS as exc:
        raise InvalidRequest(f"The upload is not a valid zip file: {exc}") from exc


def _check_entries(
    members: list[zipfile.ZipInfo], *, max_entries: int, max_file_bytes: int, max_total_bytes: int,
    max_ratio: float,
) -> None:
    if len(members) > max_entries:
        raise ImageTooLarge(
            f"The zip holds {len(members):,} files; the limit is {max_entries:,}. Split it.",
            max_entries=max_entries,
        )
    total = sum(i.file_size for i in members)
    if total > max_total_bytes:
        raise ImageTooLarge(
            f"The zip unpacks to {total:,} bytes; the limit is {max_total_bytes:,}.",
            max_bytes=max_total_bytes,
        )
    for info in members:
        name = info.filename[:200]
        if info.flag_bits & 0x1:
            raise InvalidRequest(
                f"The zip's entry {name!r} is encrypted; skyserve cannot read password-protected "
                "zips. Zip the files without a password."
            )
        if info.compress_type not in _ZIP_METHODS:
            raise InvalidRequest(
                f"The zip's entry {name!r} uses compression method {info.compress_type}, which "
                f"skyserve cannot unpack; use {', '.join(_ZIP_METHODS.values())} (deflate is the default)."
            )
        if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise ImageTooLarge(
                f"The zip's entry {name!r} expands {info.file_size / max(info.compress_size, 1):,.0f}"
                f" times ({info.compress_size:,} → {info.file_size:,} bytes); more than "
                f"{max_ratio:g} times is refused as a zip bomb.",
            )


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with archive.open(info) as handle:
            # zipfile stops at the declared size and checks the CRC at the end.
            return handle.read()
    except ZIP_ERRORS as exc:
        raise InvalidRequest(
            f"The zip's entry {info.filename[:200]!r} cannot be unpacked ({exc}); the zip is "
            "corrupt. Make it again."
        ) from exc


def zip_rows(
    archive: zipfile.ZipFile,
    *,
    store: BatchStore,
    batch_id: str,
    max_file_bytes: int,
    max_total_bytes: int,
    max_entries: int = 10_000,
    max_ratio: float = 200.0,
) -> tuple[list[str], Iterator[tuple[dict[str, str], str | None]], set[str]]:
    """Store a zip's images and return its rows: ``catalog.csv`` inside, else one row per image.

    Every entry is checked before any is unpacked (count, sizes, ratio, encryption,
    compression method); an image entry over ``max_file_bytes`` is skipped and its
    row fails with the reason.

    Returns
    -------
    (columns, rows, image_names)

    Raises
    ------
    ImageTooLarge
        Too many entries, an expanded size past ``max_total_bytes``, or a zip bomb.
    InvalidRequest
        An encrypted, corrupt (bad CRC) or unsupported (compression method) entry.
    """
    try:
        members = [i for i in archive.infolist() if not i.is_dir()]
    except ZIP_ERRORS as exc:
        raise InvalidRequest(f"The zip's directory cannot be read: {exc}") from exc
    _check_entries(
        members, max_entries=max_entries, max_file_bytes=max_file_bytes,
        max_total_bytes=max_total_bytes, max_ratio=max_ratio,
    )
    images: dict[str, zipfile.ZipInfo] = {}
    catalog = None
    for info in members:
        name = PurePosixPath(info.filename)
        if name.name.lower() == "catalog.csv":
            catalog = info
        elif name.suffix.lower() in _IMAGE_SUFFIXES and not name.name.startswith("."):
            if info.file_size > max_file_bytes:
                continue  # its row fails below with the reason
            images[info.filename] = info
    stored: set[str] = set()

    def store_file(name: str) -> None:
        # Unpacked (and CRC-checked) when a row first needs it, just before that row's
        # chunk is stored and queued: workers start on the first chunk while the rest
        # of the zip is still being unpacked.
        if name in images and name not in stored:
            store.put_file(batch_id, name, _read_entry(archive, images[name]))
            stored.add(name)

    if catalog is not None:
        # Unpacked whole (and so CRC-checked) before parsing: a corrupt catalog is a
        # clear 422 now, not an error halfway through the rows.
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
        try:
            with archive.open(catalog) as handle:
                shutil.copyfileobj(handle, spool)
        except ZIP_ERRORS as exc:
            spool.close()
            raise InvalidRequest(
                f"The zip's catalog.csv cannot be unpacked ({exc}); the zip is corrupt."
            ) from exc
        spool.seek(0)
        columns, catalog_rows = csv_rows(spool)

        def with_files() -> Iterator[tuple[dict[str, str], str | None]]:
            for values, problem in catalog_rows:
                name = target_fields(values).get("file")
                if problem is None and name:
                    store_file(name)
                yield values, problem

        return columns, with_files(), set(images)
    if not images:
        raise InvalidRequest(
            "The zip holds no images (PNG, JPEG, GIF, TIFF, WebP, BMP, FITS) and no catalog.csv."
        )

    def one_per_image() -> Iterator[tuple[dict[str, str], str | None]]:
        for name in sorted(images):
            store_file(name)
            yield {"id": PurePosixPath(name).stem, "file": name}, None

    return ["id", "file"], one_per_image(), set(images)


def require_locator(columns: list[str]) -> None:
    """Refuse a catalog none of whose columns says what to look at.

    Raises
    ------
    InvalidRequest
    """
    named = {c.strip().lower() for c in columns}
    if not any(c in named for c in LOCATOR_COLUMNS):
        raise InvalidRequest(
            "The catalog has no column that says what to look at. Add one of: "
            "image_url, file, pgc, name, or ra and dec.",
            columns=columns[:50],
        )


def check_zip(
    archive: zipfile.ZipFile, *, max_entries: int, max_total_bytes: int, max_ratio: float
) -> None:
    """Check a zip's directory before anything is unpacked (see :func:`zip_rows`).

    Raises
    ------
    ImageTooLarge, InvalidRequest
    """
    try:
        members = [i for i in archive.infolist() if not i.is_dir()]
    except ZIP_ERRORS as exc:
        raise InvalidRequest(f"The zip's directory cannot be read: {exc}") from exc
    _check_entries(
        members, max_entries=max_entries, max_file_bytes=0,
        max_total_bytes=max_total_bytes, max_ratio=max_ratio,
    )


def id_column_of(columns: list[str], id_column: str) -> str:
    """The column that holds row ids: ``id_column`` itself, else the one that differs
    from it only by case or blanks, else ``id_column`` (then no row has an id)."""
    if id_column in columns:
        return id_column
    wanted = id_column.strip().lower()
    return next((c for c in columns if c.strip().lower() == wanted), id_column)


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
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Check each row's shape and store the rows in chunks.

    ``on_chunk`` is called with each chunk's index as soon as the chunk is stored
    (the API queues it for the workers there, while the rest is still read). The id
    column is matched like the target columns, without case (``ID`` for ``id``).

    Returns
    -------
    (rows, chunks)

    Raises
    ------
    InvalidRequest
        If the header names no target column, there are no rows, or too many.
    """
    require_locator(columns)
    id_column = id_column_of(columns, id_column)
    chunk: list[BatchRow] = []
    count = chunks = 0

    def put(batch_rows: list[BatchRow]) -> None:
        nonlocal chunks
        store.put_chunk(batch_id, chunks, batch_rows)
        if on_chunk is not None:
            on_chunk(chunks)
        chunks += 1

    for values, problem in rows:
        if count >= max_rows:
            raise InvalidRequest(f"The catalog has more than {max_rows:,} rows; split it.")
        if problem is None:
            fields = target_fields(values)
            kind = row_locator(fields)
            if kind is None:
                problem = "The row names no target: fill image_url, file, pgc, name, or ra and dec."
            elif kind == "file" and zip_files is not None and fields["file"] not in zip_files:
                problem = f"The zip holds no image named {fields['file']!r} (or it was too large)."
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
            put(chunk)
            chunk = []
    if chunk:
        put(chunk)
    if count == 0:
        raise InvalidRequest("The catalog has a header but no rows.")
    return count, chunks


def parse_json_body(data: bytes) -> Any:
    """Decode a JSON request body with a readable error."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from exc
