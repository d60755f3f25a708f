"""``/v1/tasks`` and ``/v1/models``: what can be asked and which models answer."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse

from services.api.auth import AnyCaller
from services.api.deps import RegistryDep
from services.api.problems import problem_responses
from services.api.schemas import HeldOutError, MemberCard, ModelCard, TaskInfo
from shared.errors import Forbidden, UnknownModelVersion
from shared.registry import MANIFEST, RegistryReader
from shared.taskdefs import load_task_definitions

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])

TASK = Annotated[str, Path(pattern=r"^[a-z0-9-]+$", description="Task name, e.g. inclination.")]
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(png|json|csv|svg|onnx)$")


@router.get(
    "/tasks",
    response_model=list[TaskInfo],
    operation_id="list_tasks",
    summary="Tasks that can be asked, with the versions that serve them",
    responses=problem_responses(),
)
def list_tasks(registry: RegistryDep) -> list[TaskInfo]:
    infos = []
    for name, definition in load_task_definitions().items():
        versions = registry.versions(name)
        infos.append(
            TaskInfo(
                **definition.model_dump(), versions=versions, latest=versions[-1] if versions else None
            )
        )
    return infos


def _card(request: Request, registry: RegistryReader, task: str, version: int) -> ModelCard:
    manifest = registry.manifest(task, version)
    folder = registry.version_dir(task, version)
    files = {
        p.name: str(
            request.url_for("get_model_file", task=task, version=version, filename=p.name).path
        )
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and _FILE_NAME.match(p.name) and p.suffix != ".onnx"
    }
    definition = load_task_definitions(registry.root).get(task)
    error = None
    if definition is not None and definition.error_metric:
        value = manifest.metrics.get(definition.error_metric)
        if isinstance(value, int | float):
            error = HeldOutError(
                metric=definition.error_metric, value=float(value), unit=definition.unit
            )
    return ModelCard(
        title=definition.title if definition else None,
        description=definition.description if definition else None,
        intended_use=manifest.intended_use or (definition.intended_use if definition else None),
        limitations=[*(definition.limitations if definition else []), *manifest.limitations],
        unsupported_classes=definition.unsupported_classes if definition else [],
        applicability=definition.applicability if definition else [],
        license=manifest.license or (definition.license if definition else None),
        citation=manifest.citation or (definition.citation if definition else None),
        held_out_error=error,
        task=manifest.task,
        version=manifest.version,
        created=manifest.created,
        latest=registry.latest(task) == manifest.version,
        members=[MemberCard(**m.model_dump()) for m in manifest.members],
        input=manifest.input,
        output=manifest.output,
        calibration=manifest.calibration,
        tta=list(manifest.tta),
        metrics=manifest.metrics,
        parity_max_abs_diff=manifest.parity_max_abs_diff,
        training=manifest.training,
        files=files,
    )


@router.get(
    "/models",
    response_model=list[ModelCard],
    operation_id="list_models",
    summary="Every published model version, as a model card",
    responses=problem_responses(),
)
def list_models(request: Request, registry: RegistryDep) -> list[ModelCard]:
    return [
        _card(request, registry, task, version)
        for task in registry.tasks()
        for version in registry.versions(task)
    ]


@router.get(
    "/models/{task}/{version}",
    response_model=ModelCard,
    operation_id="get_model",
    summary="One model version's card",
    responses=problem_responses(404),
)
def get_model(request: Request, task: TASK, version: int, registry: RegistryDep) -> ModelCard:
    if version not in registry.versions(task):
        raise UnknownModelVersion(
            f"Task {task!r} has no version {version}.", available=registry.versions(task)
        )
    return _card(request, registry, task, version)


@router.get(
    "/models/{task}/{version}/files/{filename}",
    operation_id="get_model_file",
    summary="An evaluation file of a model version (plot, metrics, member ONNX file)",
    response_class=FileResponse,
    description="Plots, metrics and other evaluation files are public, like the model card. "
    "Member weights (`.onnx`) are the operator's: with API keys on, they need an `admin` key.",
    responses={
        200: {"content": {"image/png": {}, "application/json": {}, "application/octet-stream": {}}},
        **problem_responses(401, 403, 404),
    },
)
def get_model_file(
    task: TASK, version: int, filename: str, registry: RegistryDep, caller: AnyCaller
) -> FileResponse:
    if filename.endswith(".onnx") and not caller.admin:
        raise Forbidden(
            "Model weights (.onnx) are downloadable with an admin key only; the model card "
            "and its plots are public."
        )
    if version not in registry.versions(task):
        raise UnknownModelVersion(f"Task {task!r} has no version {version}.")
    path = registry.version_dir(task, version) / filename
    # The name pattern forbids separators, so the path cannot leave the version folder.
    if not _FILE_NAME.match(filename) or not path.is_file():
        raise UnknownModelVersion(f"Version {version} of {task!r} has no file {filename!r}.")
    return FileResponse(path)


@router.get(
    "/models/{task}",
    response_model=list[ModelCard],
    operation_id="list_task_models",
    summary="Every version of one task",
    responses=problem_responses(404),
)
def list_task_models(request: Request, task: TASK, registry: RegistryDep) -> list[ModelCard]:
    versions = registry.versions(task)
    if not versions:
        raise UnknownModelVersion(
            f"No model version serves the task {task!r}.", served_tasks=registry.tasks()
        )
    return [_card(request, registry, task, v) for v in versions]
