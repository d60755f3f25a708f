"""``/v1/batches``: a whole catalog as one job, with per-row results."""

from __future__ import annotations

import tempfile
import zipfile
from typing import IO, Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from services.api.batch_ingest import csv_rows, ingest, json_rows, parse_json_body, zip_rows
from services.api.batch_results import csv_lines, json_chunks
from services.api.deps import BatchStoreDep, QueueDep, RegistryDep, SettingsDep
from services.api.metrics import JOBS_SUBMITTED
from services.api.problems import problem_responses
from services.api.settings import ApiSettings
from services.api.submission import parse_task_list, parse_versions, resolve_tasks
from shared.batchstore import BatchStore
from shared.errors import ImageTooLarge, InvalidRequest, ServiceUnavailable, UnsupportedMediaType
from shared.jobstore import new_job_id
from shared.schemas import Batch, JobStatus

__all__ = ["router"]

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BATCH_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Batch id from POST /v1/batches.")]

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": "id,pgc\ng1,2557\ng2,5818\n"},
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
                    "type": "object",
                    "required": ["rows"],
                    "properties": {
                        "rows": {"type": "array", "items": {"type": "object"}},
                        "tasks": {"type": "array", "items": {"type": "string"}},
                        "versions": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "id_column": {"type": "string"},
                    },
                },
                "example": {"rows": [{"id": "a", "name": "M33"}], "tasks": ["inclination"]},
            },
        },
    }
}


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
    kind: str, source: Any, *, settings: ApiSettings, store: BatchStore, batch_id: str, id_column: str
) -> tuple[list[str], int, int]:
    zip_files = None
    if kind == "zip":
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile as exc:
            raise InvalidRequest(f"The upload is not a valid zip file: {exc}") from exc
        columns, rows, zip_files = zip_rows(
            archive,
            store=store,
            batch_id=batch_id,
            max_file_bytes=settings.max_upload_bytes,
            max_total_bytes=settings.max_batch_bytes,
        )
    elif kind == "json":
        columns, rows = json_rows(source)
    else:
        columns, rows = csv_rows(source)
    count, chunks = ingest(
        rows,
        store=store,
        batch_id=batch_id,
        columns=columns,
        id_column=id_column,
        chunk_rows=settings.batch_chunk_rows,
        max_rows=settings.max_batch_rows,
        zip_files=zip_files,
    )
    return columns, count, chunks


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
               **problem_responses(413, 415, 422, 503)},
)
async def submit_batch(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: BatchStoreDep,
    queue: QueueDep,
    registry: RegistryDep,
    tasks: Annotated[str | None, Query(description="Comma-separated task names.")] = None,
    versions: Annotated[str | None, Query(description="Version pins, e.g. inclination=1.")] = None,
    id_column: Annotated[str, Query(max_length=100)] = "id",
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Batch:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_batch_bytes:
        raise ImageTooLarge(f"The upload is larger than {settings.max_batch_bytes:,} bytes.")
    task_list, pins = parse_task_list([tasks] if tasks else None), parse_versions(versions)
    if ctype in ("text/csv", "application/csv", "text/plain"):
        kind, source = "csv", await _spool(request, settings.max_batch_bytes)
    elif ctype == "application/json":
        body = parse_json_body((await _spool(request, settings.max_batch_bytes)).read())
        kind, source = "json", body
        if isinstance(body, dict):
            task_list = parse_task_list(body.get("tasks") or None) or task_list
            pins = {str(k): int(v) for k, v in (body.get("versions") or {}).items()} or pins
            id_column = str(body.get("id_column") or id_column)
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
        if name.endswith(".zip") or upload.content_type in ("application/zip", "application/x-zip-compressed"):
            kind, source = "zip", upload.file
        elif name.endswith(".json") or upload.content_type == "application/json":
            kind, source = "json", parse_json_body(await upload.read())
        else:
            kind, source = "csv", upload.file
    else:
        raise UnsupportedMediaType(
            "Send the catalog as text/csv, as application/json {\"rows\": [...]}, or as "
            "multipart/form-data with a 'file' field (CSV, JSON or zip)."
        )

    def create() -> tuple[Batch, bool]:
        resolved = resolve_tasks(registry, task_list, pins)
        batch_id = new_job_id()
        try:
            columns, count, chunks = _ingest_source(
                kind, source, settings=settings, store=store, batch_id=batch_id, id_column=id_column
            )
            batch = Batch(
                id=batch_id,
                tasks=resolved,
                versions=pins,
                id_column=id_column,
                columns=columns,
                chunks=chunks,
                chunk_rows=settings.batch_chunk_rows,
                source={"format": kind, "content_type": ctype},
            )
            batch.progress.total = count
            store.create(batch)
            # The key is claimed only once the batch is stored: a refused request leaves
            # it free for the corrected retry, and of two identical requests at once the
            # first to get here wins while the other returns its batch.
            if idempotency_key:
                earlier = store.claim_idempotency_key(idempotency_key, batch_id)
                if earlier is not None:
                    store.discard(batch_id)
                    return earlier, False
        except BaseException:
            store.discard(batch_id)  # nothing of a refused batch stays in Redis
            raise
        try:
            queue.enqueue_chunks(batch_id, chunks)
        except ServiceUnavailable:
            if idempotency_key:
                store.forget_idempotency_key(idempotency_key, batch_id)
            store.cancel(batch_id)
            raise
        JOBS_SUBMITTED.labels(kind="batch").inc()
        return store.get(batch_id), True

    batch, created = await anyio.to_thread.run_sync(create)
    response.headers["Location"] = str(request.url_for("get_batch", batch_id=batch.id).path)
    if not created:
        response.status_code = status.HTTP_200_OK
    return batch


@router.get(
    "/{batch_id}",
    response_model=Batch,
    operation_id="get_batch",
    summary="A batch's status and progress (done, failed, pending)",
    responses=problem_responses(404, 422),
)
async def get_batch(batch_id: BATCH_ID, response: Response, store: BatchStoreDep) -> Batch:
    batch = await anyio.to_thread.run_sync(store.get, batch_id)
    if batch.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.headers["Retry-After"] = "1"
    return batch


@router.get(
    "/{batch_id}/results",
    operation_id="get_batch_results",
    summary="Per-row results so far (all of them once finished), as CSV or JSON",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}, "application/json": {}}},
        **problem_responses(404, 422),
    },
)
async def get_batch_results(
    batch_id: BATCH_ID,
    store: BatchStoreDep,
    format: Annotated[str, Query(pattern="^(csv|json)$")] = "csv",
) -> StreamingResponse:
    batch = await anyio.to_thread.run_sync(store.get, batch_id)
    results = store.iter_results(batch_id, batch.chunks)
    if format == "json":
        return StreamingResponse(json_chunks(results), media_type="application/json")
    return StreamingResponse(
        csv_lines(batch, results),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="skyserve-{batch_id}.csv"'},
    )


@router.delete(
    "/{batch_id}",
    response_model=Batch,
    operation_id="cancel_batch",
    summary="Cancel a batch: rows not yet run are not run",
    responses=problem_responses(404, 409, 422),
)
async def cancel_batch(batch_id: BATCH_ID, store: BatchStoreDep) -> Batch:
    return await anyio.to_thread.run_sync(store.cancel, batch_id)
