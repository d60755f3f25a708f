"""``/v1/batches``: a whole catalog as one job, with per-row results."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import IO, Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictInt, StringConstraints, ValidationError
from starlette.datastructures import UploadFile

from services.api.auth import ReadCaller, SubmitCaller, check_owner, claim
from services.api.batch_ingest import (
    check_zip,
    csv_rows,
    id_column_of,
    ingest,
    json_source,
    open_zip,
    refuse_non_text,
    require_locator,
    zip_rows,
)
from services.api.batch_results import csv_lines, json_chunks, table_file
from services.api.deps import BatchStoreDep, QueueDep, RegistryDep, SettingsDep
from services.api.metrics import JOBS_CANCELLED, JOBS_SUBMITTED
from services.api.problems import problem_responses
from services.api.settings import ApiSettings
from services.api.submission import check_versions, parse_task_list, parse_versions, resolve_tasks
from shared.batchstore import BatchStore
from shared.errors import ImageTooLarge, InvalidRequest, ServiceUnavailable, UnsupportedMediaType
from shared.jobstore import new_job_id
from shared.schemas import Batch, JobStatus
from shared.tables import EXTENSIONS, MEDIA_TYPES, TABLE_FORMATS
from shared.targets import LOCATOR_COLUMNS

__all__ = ["router"]

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BATCH_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Batch id from POST /v1/batches.")]

_TASKS = {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}}
_VERSIONS = {
    "type": "object",
    "propertyNames": {"pattern": "^[a-z0-9-]{1,64}$"},
    "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 999_999_999},
}
_ROWS = {"type": "array", "minItems": 1, "items": {"type": "object"}}
#: A CSV whose header names a column that says what to look at, then at least one row
#: (the columns are checked exactly like this by services.api.batch_ingest.ingest).
_CSV_PATTERN = (
    r"^([^,\n\r\"]*,)*[ ]*(" + "|".join(LOCATOR_COLUMNS) + r")[ ]*(,[^,\n\r\"]*)*\n[^\n\r\"]+"
)

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string", "pattern": _CSV_PATTERN},
                "example": "id,pgc\ng1,2557\ng2,5818\n",
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "CSV, JSON or zip."},
                        "tasks": {"type": "string"},
                        "versions": {"type": "string"},
                        "id_column": {"type": "string"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "anyOf": [
                        {
                            "type": "object",
                            "required": ["rows"],
                            "properties": {
                                "rows": _ROWS,
                                "tasks": _TASKS,
                                "versions": _VERSIONS,
                                "id_column": {"type": "string", "minLength": 1, "maxLength": 100},
                            },
                        },
                        _ROWS,
                    ]
                },
                "example": {"rows": [{"id": "a", "name": "M33"}], "tasks": ["inclination"]},
            },
        },
    }
}


class _JsonOptions(BaseModel):
    """The members of a JSON catalog object besides its rows."""

    # Declared without None: an explicit null is refused, as the schema says.
    tasks: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]] = None  # type: ignore[assignment]
    versions: dict[str, StrictInt] = None  # type: ignore[assignment]
    id_column: str = Field(default=None, min_length=1, max_length=100)  # type: ignore[assignment]


def _json_catalog(source: IO[bytes]) -> tuple[dict[str, Any], Any]:
    """Read a JSON catalog lazily; returns (checked options, (columns, rows))."""
    options, columns, rows = json_source(source)
    try:
        checked = _JsonOptions.model_validate(options)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(
            f"The JSON catalog's options are not valid: {where}. Send tasks as a list of task "
            'names, versions as {"task": version number}, id_column as a column name.'
        ) from None
    return checked.model_dump(exclude_none=True), (columns, rows)


async def _spool(request: Request, limit: int) -> IO[bytes]:
    """Copy the raw body to a temporary file, refusing it past ``limit`` bytes."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            spool.close()
            raise ImageTooLarge(f"The catalog is larger than {limit:,} bytes; split it.", max_bytes=limit)
        spool.write(part)
    spool.seek(0)
    return spool


def _ingest_source(
    kind: str,
    source: Any,
    *,
    settings: ApiSettings,
    store: BatchStore,
    batch_id: str,
    id_column: str,
    on_chunk: Callable[[int], None],
) -> tuple[list[str], int, int]:
    zip_files = None
    if kind == "zip":
        columns, rows, zip_files = zip_rows(
            source,
            store=store,
            batch_id=batch_id,
            max_file_bytes=settings.max_upload_bytes,
            max_total_bytes=settings.max_batch_bytes,
            max_entries=settings.max_zip_entries,
            max_ratio=settings.max_zip_ratio,
        )
    else:
        columns, rows = source
    count, chunks = ingest(
        rows,
        store=store,
        batch_id=batch_id,
        columns=columns,
        id_column=id_column,
        chunk_rows=settings.batch_chunk_rows,
        max_rows=settings.max_batch_rows,
        zip_files=zip_files,
        on_chunk=on_chunk,
    )
    return columns, count, chunks


def _precheck(kind: str, source: Any, settings: ApiSettings) -> Any:
    """Open and check a catalog: a zip's directory and entries, a CSV's header."""
    if kind == "zip":
        archive = open_zip(source)
        check_zip(
            archive,
            max_entries=settings.max_zip_entries,
            max_total_bytes=settings.max_batch_bytes,
            max_ratio=settings.max_zip_ratio,
        )
        return archive
    if kind == "csv":
        refuse_non_text(source)
    columns, rows = csv_rows(source) if kind == "csv" else source
    require_locator(columns)
    return columns, rows


def _await_sealed(store: BatchStore, batch_id: str, timeout_s: float) -> Batch | None:
    """The earlier batch of an Idempotency-Key once its input is all stored, or None if it
    was refused (deleted) meanwhile. Waits in a thread: only concurrent duplicates get here."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sealed = store.sealed(batch_id)
        if sealed is None:
            return None
        if sealed:
            return store.get(batch_id)
        time.sleep(0.05)
    raise ServiceUnavailable("The same batch is still being read from an earlier request; try again.")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Batch,
    operation_id="submit_batch",
    summary="Submit a catalog (CSV, JSON rows, or a zip of images) as one batch",
    description="Rows name what to look at by their columns: `image_url`, `file` (inside the "
    "zip), `pgc`, `name`, or `ra`+`dec` (+`fov_arcmin`). Every other column is kept and "
    "returned with the results. Rows that cannot be used fail alone, with a reason.",
    openapi_extra=_BODY,
    responses={200: {"model": Batch, "description": "An earlier batch with the same Idempotency-Key."},
               **problem_responses(400, 415, auth=True)},
)
async def submit_batch(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: BatchStoreDep,
    queue: QueueDep,
    registry: RegistryDep,
    caller: SubmitCaller,
    tasks: Annotated[str | None, Query(description="Comma-separated task names.")] = None,
    versions: Annotated[str | None, Query(description="Version pins, e.g. inclination=1.")] = None,
    id_column: Annotated[str, Query(min_length=1, max_length=100)] = "id",
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Batch:
    if caller.key is not None:
        await anyio.to_thread.run_sync(request.app.state.active_jobs.check, caller.key.id)
    idempotency_key = caller.idempotency_scope(idempotency_key)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # Sizes are counted while the body streams (services.api.limits.BodyLimitMiddleware).
    task_list, pins = parse_task_list([tasks] if tasks else None), parse_versions(versions)
    source: Any
    if ctype in ("text/csv", "application/csv", "text/plain"):
        kind, source = "csv", await _spool(request, settings.max_batch_bytes)
    elif ctype == "application/json":
        spooled = await _spool(request, settings.max_batch_bytes)
        options, source = await anyio.to_thread.run_sync(_json_catalog, spooled)
        kind = "json"
        task_list = parse_task_list(options.get("tasks")) or task_list
        pins = check_versions(options.get("versions") or {}) or pins
        id_column = options.get("id_column") or id_column
    elif ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=20)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The form has no 'file' field holding the catalog.")
        for field, value in (("tasks", form.get("tasks")), ("versions", form.get("versions"))):
            if isinstance(value, str) and value:
                if field == "tasks":
                    task_list = parse_task_list([value])
                else:
                    pins = parse_versions(value)
        if isinstance(form.get("id_column"), str) and form.get("id_column"):
            id_column = str(form.get("id_column"))
        name = (upload.filename or "").lower()
        head = upload.file.read(4)
        upload.file.seek(0)
        if (
            name.endswith(".zip")
            or upload.content_type in ("application/zip", "application/x-zip-compressed")
            or head == b"PK\x03\x04"  # a zip under another name
        ):
            kind, source = "zip", upload.file
        elif name.endswith(".json") or upload.content_type == "application/json":
            # Only the rows: tasks, versions and id_column come from the form fields.
            kind = "json"
            source = (await anyio.to_thread.run_sync(_json_catalog, upload.file))[1]
        else:
            kind, source = "csv", upload.file
    else:
        raise UnsupportedMediaType(
            "Send the catalog as text/csv, as application/json {\"rows\": [...]}, or as "
            "multipart/form-data with a 'file' field (CSV, JSON or zip)."
        )

    # Everything that can be checked without a batch id is checked before one exists (and
    # before an Idempotency-Key is looked at): a broken catalog is a 422 now.
    source = await anyio.to_thread.run_sync(_precheck, kind, source, settings)

    def create() -> tuple[Batch, bool]:
        resolved = resolve_tasks(registry, task_list, pins)
        while True:
            batch_id = new_job_id()
            # The record exists before its first chunk is queued (a worker that finds no
            # record drops the chunk); rows, chunks and columns are sealed at the end.
            store.open(
                Batch(
                    id=batch_id,
                    tasks=resolved,
                    versions=pins,
                    id_column=id_column,
                    columns=[],
                    chunk_rows=settings.batch_chunk_rows,
                    source={"format": kind, "content_type": ctype},
                )
            )
            if not idempotency_key:
                break
            # Claimed before anything is queued, so of two identical requests at once only
            # one batch ever runs; the other waits for it to be accepted and returns it.
            try:
                earlier = store.claim_idempotency_key(idempotency_key, batch_id)
            except BaseException:
                store.discard(batch_id)
                raise
            if earlier is None:
                break
            store.discard(batch_id)
            accepted = _await_sealed(store, earlier.id, settings.request_timeout_seconds)
            if accepted is not None:
                return accepted, False
            # The earlier request was refused (nothing of it stays): try as the first.
        try:
            claim(request, caller, "batch", batch_id, settings.job_ttl_seconds)
            with queue.chunk_sender(batch_id) as send:
                columns, count, chunks = _ingest_source(
                    kind, source, settings=settings, store=store, batch_id=batch_id,
                    id_column=id_column, on_chunk=send,
                )
            batch = store.seal(
                batch_id,
                columns=columns,
                id_column=id_column_of(columns, id_column),
                rows=count,
                chunks=chunks,
            )
        except BaseException:
            # Refused (a row too many, too large, a corrupt zip entry, the queue away):
            # nothing of it stays in Redis, chunks already queued find no batch and are
            # dropped, and the Idempotency-Key is free for the corrected retry.
            if idempotency_key:
                store.forget_idempotency_key(idempotency_key, batch_id)
            store.discard(batch_id)
            raise
        JOBS_SUBMITTED.labels(kind="batch").inc()
        return batch, True

    batch, created = await anyio.to_thread.run_sync(create)
    if created and caller.key is not None:
        await anyio.to_thread.run_sync(request.app.state.active_jobs.add, caller.key.id, "batch", batch.id)
    response.headers["Location"] = str(request.url_for("get_batch", batch_id=batch.id).path)
    if not created:
        response.status_code = status.HTTP_200_OK
    return batch


@router.get(
    "/{batch_id}",
    response_model=Batch,
    operation_id="get_batch",
    summary="A batch's status and progress (done, failed, pending)",
    responses=problem_responses(404, auth=True),
)
async def get_batch(
    batch_id: BATCH_ID, request: Request, response: Response, store: BatchStoreDep, caller: ReadCaller
) -> Batch:
    await anyio.to_thread.run_sync(check_owner, request, caller, "batch", batch_id)
    batch = await anyio.to_thread.run_sync(store.get, batch_id)
    if batch.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.headers["Retry-After"] = "1"
    return batch


@router.get(
    "/{batch_id}/results",
    operation_id="get_batch_results",
    summary="Per-row results so far (all of them once finished): CSV, JSON, ECSV, FITS, "
    "VOTable or Parquet",
    description="`format=csv` (default) and `json` stream row by row. `ecsv`, `fits` (a "
    "binary table), `votable` and `parquet` are built whole and carry units and column "
    "descriptions; in `fits` and `votable` column names use `_` for `-` "
    "(`object_type_p_galaxy`). The columns are those of the CSV.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {MEDIA_TYPES[f]: {} for f in TABLE_FORMATS}},
        **problem_responses(404, 422, auth=True),
    },
)
async def get_batch_results(
    batch_id: BATCH_ID,
    request: Request,
    store: BatchStoreDep,
    caller: ReadCaller,
    format: Annotated[
        str,
        Query(pattern=f"^({'|'.join(TABLE_FORMATS)})$", description="One of " + ", ".join(TABLE_FORMATS)),
    ] = "csv",
) -> Response:
    await anyio.to_thread.run_sync(check_owner, request, caller, "batch", batch_id)
    batch = await anyio.to_thread.run_sync(store.get, batch_id)
    results = store.iter_results(batch_id, batch.chunks)
    disposition = {
        "Content-Disposition": f'attachment; filename="skyserve-{batch_id}{EXTENSIONS[format]}"'
    }
    if format == "json":
        return StreamingResponse(json_chunks(results), media_type=MEDIA_TYPES["json"])
    if format == "csv":
        return StreamingResponse(
            csv_lines(batch, results), media_type=MEDIA_TYPES["csv"], headers=disposition
        )
    data = await anyio.to_thread.run_sync(lambda: table_file(batch, results, format))
    return Response(data, media_type=MEDIA_TYPES[format], headers=disposition)


@router.delete(
    "/{batch_id}",
    response_model=Batch,
    operation_id="cancel_batch",
    summary="Cancel a batch: rows not yet run are not run",
    responses=problem_responses(404, 409, auth=True),
)
async def cancel_batch(
    batch_id: BATCH_ID, request: Request, store: BatchStoreDep, caller: SubmitCaller
) -> Batch:
    await anyio.to_thread.run_sync(check_owner, request, caller, "batch", batch_id)
    batch = await anyio.to_thread.run_sync(store.cancel, batch_id)
    JOBS_CANCELLED.labels(kind="batch").inc()
    return batch
