"""``/v1/jobs``: submit, poll (optionally waiting), cancel."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import redis
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from starlette.datastructures import UploadFile

from services.api.auth import Caller, ReadCaller, SubmitCaller, check_owner, owner_commands
from services.api.deps import QueueDep, ReaderDep, RegistryDep, SettingsDep, StoreDep, WaiterDep
from services.api.metrics import JOBS_CANCELLED
from services.api.problems import problem_responses
from services.api.submission import (
    check_versions,
    parse_task_list,
    parse_versions,
    submit_image,
    submit_target,
)
from shared.errors import ImageTooLarge, InvalidRequest, NoImageYet, UnsupportedMediaType
from shared.schemas import TERMINAL_STATUSES, Job, Target
from shared.seen import seen_png

__all__ = ["router", "OPENAPI_COMPONENTS"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Job id from POST /v1/jobs.")]

TaskName = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]


class TargetJobRequest(BaseModel):
    """A job on a catalogued object or a sky position instead of an uploaded image."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"target": {"pgc": 2557}, "tasks": ["inclination"]},
                {"target": {"name": "M33"}},
                {"target": {"ra": 10.68, "dec": 41.27, "fov_arcmin": 5}},
                {"target": {"coordinates": "00h42m44.3s +41d16m09s"}, "tasks": ["inclination"]},
            ]
        }
    }

    target: Target = Field(
        description='Exactly one kind of target: {"pgc": N}, {"name": "M33"}, '
        '{"ra": …, "dec": …} or {"coordinates": "00h42m44.3s +41d16m09s"}, each with an '
        'optional "fov_arcmin". Mixtures and unknown keys are refused with 422.'
    )
    tasks: list[TaskName] = Field(default_factory=list, description="Default: every served task.")
    versions: dict[TaskName, Annotated[StrictInt, Field(ge=1, lt=10**9)]] = Field(
        default_factory=dict, description="Version pins of requested tasks, e.g. {\"inclination\": 2}."
    )


# The JSON body's schema refers to the target kinds as components; the app registers
# them (``OPENAPI_COMPONENTS``) so the references resolve in /openapi.json.
_TARGET_JOB_SCHEMA = TargetJobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
OPENAPI_COMPONENTS: dict[str, Any] = _TARGET_JOB_SCHEMA.pop("$defs", {})

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _TARGET_JOB_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, GIF, TIFF, WebP, BMP or FITS image.",
                        },
                        "tasks": {
                            "type": "string",
                            "description": "Comma-separated task names (repeatable); "
                            "default: every served task.",
                            "example": "inclination",
                        },
                        "versions": {
                            "type": "string",
                            "description": "Optional version pins, e.g. inclination=1.",
                        },
                    },
                }
            }
        },
    }
}


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None, str | None, dict[str, Any]]:
    # The body's size is counted while it streams (services.api.limits.BodyLimitMiddleware).
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "Send an image as multipart/form-data with a 'file' field "
            "(curl -F file=@galaxy.png -F tasks=inclination …), or JSON naming a target "
            '({"target": {"name": "M33"}}).'
        )
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("The form has no 'file' field holding an image.")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"The upload is larger than the limit of {max_bytes:,} bytes.", max_bytes=max_bytes
        )
    fields = {
        "tasks": [v for v in form.getlist("tasks") if isinstance(v, str)],
        "versions": form.get("versions") if isinstance(form.get("versions"), str) else None,
    }
    return data, upload.filename, upload.content_type, fields


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="submit_job",
    summary="Submit an image, a catalogued object or a sky position for one or more tasks",
    description="Stores the image, queues it for the workers and answers at once with the job "
    "record. Poll `Location` (or pass `?wait=`) for the result. A repeated request with the "
    "same `Idempotency-Key` returns the first job instead of making a second one.",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": Job, "description": "An earlier job with the same Idempotency-Key."},
        **problem_responses(400, 404, 415, auth=True),
    },
)
async def submit_job(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    registry: RegistryDep,
    caller: SubmitCaller,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Job:
    if caller.key is not None:
        await anyio.to_thread.run_sync(request.app.state.active_jobs.check, caller.key.id)
    idempotency_key = caller.idempotency_scope(idempotency_key)

    active = request.app.state.active_jobs

    def owned(pipe: redis.client.Pipeline, job_id: str, undo: bool) -> None:
        # Stored with the job, in its transaction: owner, and the key's unfinished count.
        owner_commands(pipe, request, caller, "job", job_id, settings.job_ttl_seconds, undo=undo)
        if caller.key is not None:
            active.add_commands(pipe, caller.key.id, "job", job_id, undo=undo)

    if request.headers.get("content-type", "").startswith("application/json"):
        job, created = await _submit_target_json(request, store, queue, registry, idempotency_key, owned)
    else:
        job, created = await _submit_upload(
            request, settings, store, queue, registry, idempotency_key, owned
        )
    # The record as JSON once, not validated again and re-encoded by FastAPI.
    return Response(
        job.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        media_type="application/json",
        headers={"Location": str(request.url_for("get_job", job_id=job.id).path)},
    )


async def _submit_target_json(request, store, queue, registry, idempotency_key, owned):  # type: ignore[no-untyped-def]
    raw = await request.body()
    try:
        body = TargetJobRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequest(
            f"The JSON body is not a target job: {_validation_text(exc)}.",
            errors=[
                {"loc": _location(e["loc"]), "msg": _message(e["msg"]), "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False)
            ],
        ) from None
    tasks, pins = parse_task_list(body.tasks), check_versions(body.versions)
    return await anyio.to_thread.run_sync(
        lambda: submit_target(
            store=store,
            queue=queue,
            registry=registry,
            target=body.target.model_dump(exclude_none=True),
            tasks=tasks,
            pins=pins,
            idempotency_key=idempotency_key,
            claim=owned,
        )
    )


def _location(loc: tuple[int | str, ...]) -> list[int | str]:
    """``('target', 'pgc', 'pgc')`` → ``['target', 'pgc']``: the union's tag repeats the key."""
    out: list[int | str] = []
    for part in loc:
        if not out or out[-1] != part:
            out.append(part)
    return out


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _validation_text(exc: ValidationError) -> str:
    # Without their own full stops: the caller ends the sentence ("degrees.." otherwise).
    return "; ".join(
        f"{'.'.join(map(str, _location(e['loc'])))}: {_message(e['msg']).rstrip('.')}"
        for e in exc.errors()
    )


async def _submit_upload(request, settings, store, queue, registry, idempotency_key, owned):  # type: ignore[no-untyped-def]
    data, filename, content_type, fields = await _read_upload(request, settings.max_upload_bytes)
    tasks, pins = parse_task_list(fields["tasks"]), parse_versions(fields["versions"])
    return await anyio.to_thread.run_sync(
        lambda: submit_image(
            store=store,
            queue=queue,
            registry=registry,
            data=data,
            filename=filename,
            content_type=content_type,
            tasks=tasks,
            pins=pins,
            max_pixels=settings.max_image_pixels,
            idempotency_key=idempotency_key,
            claim=owned,
        )
    )


async def _check_owner(request: Request, caller: Caller, job_id: str) -> None:
    if caller.admin:
        return  # sees every job: no need for a thread to look up the owner
    await anyio.to_thread.run_sync(check_owner, request, caller, "job", job_id)


@router.get(
    "/{job_id}",
    response_model=Job,
    operation_id="get_job",
    summary="Read a job: status, progress and, once done, the result",
    responses=problem_responses(404, auth=True),
)
async def get_job(
    job_id: JOB_ID,
    request: Request,
    settings: SettingsDep,
    reader: ReaderDep,
    waiter: WaiterDep,
    caller: ReadCaller,
    wait: Annotated[
        float,
        Query(ge=0, le=3600, description="Seconds to wait for the job to finish before answering "
              "(capped by the server, 30 s by default)."),
    ] = 0.0,
) -> Job:
    await _check_owner(request, caller, job_id)
    timeout = min(wait, settings.max_wait_seconds)
    # Woken by the job's end (pub/sub), not by polling: see services/api/waiting.py.
    raw, status_now = await (
        waiter.wait(job_id, reader.get_raw, timeout) if timeout > 0 else reader.get_raw(job_id)
    )
    # The stored record is the Job's JSON already: sent as it is, not parsed, validated
    # again and re-encoded (a result with every member's answer is the largest reply).
    headers = {} if status_now in TERMINAL_STATUSES else {"Retry-After": "1"}
    return Response(raw, media_type="application/json", headers=headers)


@router.delete(
    "/{job_id}",
    response_model=Job,
    operation_id="cancel_job",
    summary="Cancel a queued or running job",
    description="A worker that picks the job up afterwards skips it; a running job's answer "
    "is discarded. Cancelling a cancelled job is harmless; a finished one gives 409.",
    responses=problem_responses(404, 409, auth=True),
)
async def cancel_job(job_id: JOB_ID, request: Request, store: StoreDep, caller: SubmitCaller) -> Job:
    await _check_owner(request, caller, job_id)
    job = await anyio.to_thread.run_sync(store.cancel, job_id)
    JOBS_CANCELLED.labels(kind="job").inc()
    return job


@router.get(
    "/{job_id}/image",
    operation_id="get_job_image",
    summary="The image the models saw: a target's rotated, cropped cutout, or an upload "
    "decoded and padded to square",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **problem_responses(404, 409, auth=True)},
)
async def get_job_image(
    job_id: JOB_ID, request: Request, store: StoreDep, settings: SettingsDep, caller: ReadCaller
) -> Response:
    await _check_owner(request, caller, job_id)
    png = await anyio.to_thread.run_sync(store.seen_image, job_id)
    if png is None:
        job = await anyio.to_thread.run_sync(store.get, job_id)  # 404 for an unknown job
        if job.input.kind != "image":
            # The job exists; its image does not (yet): a state conflict, not a missing job.
            raise NoImageYet(
                f"Job {job_id} has no evaluated image yet: a target's cutout is kept once "
                "the worker has fetched it."
            )
        if job.status in TERMINAL_STATUSES:
            # The worker keeps an answered upload's image; the upload itself is gone.
            raise NoImageYet(
                f"Job {job_id} is {job.status.value} and kept no image: an upload's image "
                "is kept only when the worker could read it."
            )
        # Still waiting: render the stored upload (the worker keeps its own once it answers).
        payload = await anyio.to_thread.run_sync(store.payload, job_id)
        png = await anyio.to_thread.run_sync(
            lambda: seen_png(payload, max_pixels=settings.max_image_pixels)
        )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
