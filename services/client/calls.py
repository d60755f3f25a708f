"""The requests both clients send and how their answers are read, written once.

``SkyserveClient`` and ``AsyncSkyserveClient`` differ only in how they do I/O; what
goes on the wire (paths, parameters, bodies) and how an answer becomes a ``Job``,
a ``Batch`` or an error lives here, as plain functions without I/O.
"""

from __future__ import annotations

import math
import mimetypes
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import httpx

from services.client.errors import (
    SkyserveAPIError,
    SkyserveConnectionError,
    problem_from_response,
)
from services.client.settings import ClientSettings
from shared.schemas import TERMINAL_STATUSES, Batch, Job
from shared.tables import EXTENSIONS, TABLE_FORMATS

__all__ = [
    "LONG_POLL_SECONDS",
    "TRANSIENT_STATUSES",
    "ResultFormat",
    "http_options",
    "request_args",
    "job_path",
    "batch_path",
    "results_destination",
    "results_table",
    "as_dataframe",
    "timeout_message",
    "ImageSource",
    "BatchSource",
    "Call",
    "Deadline",
    "image_call",
    "target_call",
    "batch_call",
    "raise_for_problem",
    "connection_error",
    "retry_after",
    "read_job",
    "read_batch",
    "read_readiness",
    "batch_finished",
]

#: Longest ``?wait=`` asked of the server per request; it caps it at its own maximum.
LONG_POLL_SECONDS = 30.0

ImageSource = str | os.PathLike[str] | bytes
BatchSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]]

_BATCH_MEDIA_TYPES = {".csv": "text/csv", ".json": "application/json", ".zip": "application/zip"}


@dataclass(frozen=True)
class Call:
    """One HTTP request, described without sending it.

    ``upload`` names a file on disk sent as the multipart field ``(field, path, media
    type)``; the client opens it only while sending, so large files are streamed.
    ``wait`` is how long the server may hold the request, added to the read timeout.
    """

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)
    upload: tuple[str, Path, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    wait: float = 0.0


class Deadline:
    """How long a wait may still last; ``None`` means forever."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + max(timeout, 0.0)

    def remaining(self) -> float:
        return math.inf if self._end is None else max(self._end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def long_poll(self) -> float:
        """The ``?wait=`` for the next request: never past the deadline."""
        return round(min(self.remaining(), LONG_POLL_SECONDS), 3)

    def pause(self, retry_after_s: float | None, poll: float) -> float:
        """Seconds to sleep before the next request: no sooner than the server's
        ``Retry-After`` asks, nor than ``poll``; never past the deadline."""
        delay = poll if retry_after_s is None else max(retry_after_s, poll)
        return max(min(delay, self.remaining()), 0.0)


def _task_list(tasks: str | Sequence[str] | None) -> list[str]:
    if tasks is None:
        return []
    parts = tasks.split(",") if isinstance(tasks, str) else [p for t in tasks for p in t.split(",")]
    return [p.strip() for p in parts if p.strip()]


def _pins(versions: Mapping[str, int] | None) -> str | None:
    return ",".join(f"{task}={int(v)}" for task, v in versions.items()) if versions else None


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key is not None else {}


def image_call(
    source: ImageSource,
    *,
    tasks: str | Sequence[str] | None,
    versions: Mapping[str, int] | None,
    idempotency_key: str | None,
) -> Call:
    """``POST /v1/jobs`` with one image as multipart ``file``.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that is not a file.
    """
    form = {}
    if names := _task_list(tasks):
        form["tasks"] = ",".join(names)
    if pins := _pins(versions):
        form["versions"] = pins
    headers = _idempotency(idempotency_key)
    if isinstance(source, bytes | bytearray):
        # The API recognises the format from the bytes, not from a name or media type.
        files = {"file": ("image", bytes(source), "application/octet-stream")}
        return Call("POST", "/v1/jobs", form=form, files=files, headers=headers)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"There is no image file at {str(path)!r}.")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Call("POST", "/v1/jobs", form=form, upload=("file", path, media), headers=headers)


def target_call(
    *,
    pgc: int | None,
    name: str | None,
    ra: float | str | None,
    dec: float | str | None,
    fov_arcmin: float | None,
    tasks: str | Sequence[str] | None,
    versions: Mapping[str, int] | None,
    idempotency_key: str | None,
    coordinates: str | None = None,
) -> Call:
    """``POST /v1/jobs`` with a JSON target: a PGC number, a name, ``ra`` + ``dec``, or
    ``coordinates`` (both in one string, e.g. ``"00h42m44.3s +41d16m09s"``).

    Raises
    ------
    ValueError
        Unless exactly one of ``pgc``, ``name``, ``coordinates`` or the pair
        ``ra``/``dec`` is given.
    """
    given = [
        label
        for label, v in (("pgc", pgc), ("name", name), ("coordinates", coordinates))
        if v is not None
    ]
    if ra is not None or dec is not None:
        if ra is None or dec is None:
            raise ValueError("A sky position needs both ra and dec (degrees or sexagesimal).")
        given.append("ra/dec")
    if len(given) != 1:
        raise ValueError(
            "Give exactly one target: pgc=…, name=…, coordinates=… or ra=… with dec=…"
            + (f" (got {', '.join(given)})." if given else ".")
        )
    target: dict[str, Any]
    if pgc is not None:
        target = {"pgc": int(pgc)}
    elif name is not None:
        target = {"name": name}
    elif coordinates is not None:
        target = {"coordinates": coordinates}
    else:
        target = {"ra": ra, "dec": dec}
    if fov_arcmin is not None:
        target["fov_arcmin"] = fov_arcmin
    body: dict[str, Any] = {"target": target}
    if names := _task_list(tasks):
        body["tasks"] = names
    if versions:
        body["versions"] = {task: int(v) for task, v in versions.items()}
    return Call("POST", "/v1/jobs", json=body, headers=_idempotency(idempotency_key))


def batch_call(
    source: BatchSource,
    *,
    tasks: str | Sequence[str] | None,
    versions: Mapping[str, int] | None,
    id_column: str | None,
    idempotency_key: str | None,
) -> Call:
    """``POST /v1/batches`` from a CSV, JSON or zip file, or from rows in memory.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that is not a file.
    ValueError
        If the file is not ``.csv``, ``.json`` or ``.zip``.
    """
    params: dict[str, Any] = {}
    if names := _task_list(tasks):
        params["tasks"] = ",".join(names)
    if pins := _pins(versions):
        params["versions"] = pins
    if id_column is not None:
        params["id_column"] = id_column
    headers = _idempotency(idempotency_key)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"There is no catalog file at {str(path)!r}.")
        media = _BATCH_MEDIA_TYPES.get(path.suffix.lower())
        if media is None:
            raise ValueError(
                f"{path.name!r} is not a .csv, .json or .zip file; a batch is a CSV "
                "catalog, a JSON list of rows, or a zip of images with catalog.csv."
            )
        return Call(
            "POST", "/v1/batches", params=params, upload=("file", path, media), headers=headers
        )
    rows = [dict(row) for row in source]
    return Call("POST", "/v1/batches", params=params, json={"rows": rows}, headers=headers)


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta or HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def raise_for_problem(response: httpx.Response) -> httpx.Response:
    """Return a successful response; raise ``SkyserveAPIError`` for an error status.

    The response body must have been read (streamed responses: ``read()`` first).
    """
    if response.is_error:
        raise SkyserveAPIError(
            response.status_code, problem_from_response(response), retry_after=retry_after(response)
        )
    return response


def connection_error(base_url: str, exc: httpx.TransportError) -> SkyserveConnectionError:
    """A ``SkyserveConnectionError`` saying what failed and what to try."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        message = (
            f"Cannot connect to the skyserve API at {base_url} ({exc or type(exc).__name__}). "
            "Is it running? Start one locally with `skyserve-local`, or point the client "
            "at another server with --url or SKYSERVE_URL."
        )
    elif isinstance(exc, httpx.TimeoutException):
        message = (
            f"The skyserve API at {base_url} did not answer in time ({type(exc).__name__}); "
            "it may be overloaded. Try again, or raise SKYSERVE_CLIENT_TIMEOUT."
        )
    else:
        message = (
            f"The connection to the skyserve API at {base_url} failed: {exc or type(exc).__name__}."
        )
    return SkyserveConnectionError(message)


def read_job(response: httpx.Response) -> Job:
    """A job record from a successful response."""
    return Job.model_validate(raise_for_problem(response).json())


def read_batch(response: httpx.Response) -> Batch:
    """A batch record from a successful response."""
    return Batch.model_validate(raise_for_problem(response).json())


def batch_finished(batch: Batch) -> bool:
    """Whether a batch will change no more (succeeded, failed or cancelled)."""
    return batch.status in TERMINAL_STATUSES


def read_readiness(response: httpx.Response) -> dict[str, Any]:
    """The readiness report, also from a ``503`` that carries one (not ready)."""
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "ready" in body:
            return body
    return raise_for_problem(response).json()


# -- shared by both clients ----------------------------------------------------------------
ResultFormat = Literal["csv", "json", "ecsv", "fits", "votable", "parquet"]

#: Statuses worth retrying while waiting: the server said "not now", not "no".
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

try:
    _VERSION = version("skyserve")
except PackageNotFoundError:  # running from a checkout that was never installed
    _VERSION = "0"


def http_options(
    url: str | None, *, api_key: str | None, timeout: float | None
) -> tuple[str, dict[str, Any]]:
    """The base URL and ``httpx`` client options, arguments first, then ``SKYSERVE_*``."""
    settings = ClientSettings()
    base_url = (url or settings.url).rstrip("/")
    if api_key is None and settings.api_key is not None:
        api_key = settings.api_key.get_secret_value()
    headers = {"User-Agent": f"skyserve-client/{_VERSION}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    seconds = timeout if timeout is not None else settings.client_timeout
    return base_url, {
        "base_url": base_url,
        "headers": headers,
        "timeout": httpx.Timeout(seconds, connect=min(seconds, 10.0)),
    }


def request_args(call: Call, *, timeout: httpx.Timeout, stack: ExitStack) -> dict[str, Any]:
    """``httpx`` request arguments for ``call``; an upload is opened on ``stack``.

    An open file is streamed by httpx's multipart encoder, in sync and async clients
    alike, so a large catalog is never held in memory.
    """
    files: dict[str, Any] = dict(call.files)
    if call.upload is not None:
        name, path, media = call.upload
        files[name] = (path.name, stack.enter_context(path.open("rb")), media)
    if call.wait:
        # A long poll is held by the server on purpose; do not time it out early.
        timeout = httpx.Timeout(
            None if timeout.read is None else timeout.read + call.wait, connect=timeout.connect
        )
    return {
        "method": call.method,
        "url": call.path,
        "params": call.params or None,
        "json": call.json,
        "data": call.form or None,
        "files": files or None,
        "headers": call.headers or None,
        "timeout": timeout,
    }


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def batch_path(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


def results_destination(
    batch_id: str, *, fmt: str, dest: str | os.PathLike[str] | None
) -> tuple[Path, Path]:
    """Where batch results go, and the ``.part`` file they are streamed into first.

    Raises
    ------
    ValueError
        For a format that is not one of :data:`shared.tables.TABLE_FORMATS`.
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(TABLE_FORMATS)}, not {fmt!r}.")
    path = Path(dest) if dest is not None else Path(f"{batch_id}{EXTENSIONS[fmt]}")
    return path, path.with_name(path.name + ".part")


def results_table(data: bytes) -> Any:
    """Batch results downloaded as ECSV → an ``astropy.table.Table`` (types and units kept)."""
    from astropy.table import Table

    return Table.read(data.decode("utf-8"), format="ascii.ecsv")


def as_dataframe(table: Any) -> Any:
    """An astropy table as a pandas DataFrame (masked values become NaN/None).

    Raises
    ------
    ImportError
        Without pandas, saying what to install.
    """
    try:
        import pandas  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "A DataFrame needs pandas: pip install pandas (or ask for the astropy Table)."
        ) from exc
    return table.to_pandas(index=False)


def timeout_message(what: str, *, status: str, timeout: float | None) -> str:
    return f"{what} is still {status} after waiting {timeout:g} s."
