"""From image bytes to per-task answers: the one path single jobs and batch chunks share.

:func:`prepare` decodes and resizes one image once per distinct input spec (a batch
calls it from its fetch threads, one row at a time); :func:`answer` stacks prepared
images and runs each task's ensemble once over all of them, so a chunk of rows is
one batch per task, and a single job is simply a batch of one.

A task whose definition has applicability rules (inclination: not a nebula, a
cluster, an elliptical, a face-on disk or an empty field) gets its evidence in the
same job: :func:`load_models` adds the evidence tasks' models (``ModelSet.evidence``)
when they were not asked for, :func:`answer` runs them on the same images and
:func:`shared.applicability.judge` marks each answer ``applicable`` or not. Evidence
answers nobody asked for are not returned. An evidence task that was asked for is
judged by its served answer; one that was not runs a cheap pass
(:func:`evidence_model`: every member on the image as it is, MC dropout's
deterministic pass), so judging costs about as much as the inclination itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from services.worker.inference import predict as predict_images
from services.worker.sessions import LoadedModel, evidence_manifest
from shared.applicability import apply_verdict, judge
from shared.errors import InvalidRequest, NonFiniteAnswer, SkyserveError, UnknownTask
from shared.preprocessing import DecodedImage
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

if TYPE_CHECKING:  # the runtime holds the micro-batcher, which answers through this module
    from services.worker.runtime import WorkerRuntime

__all__ = [
    "ModelSet",
    "Prepared",
    "Stopwatch",
    "answer",
    "answer_task",
    "evidence_model",
    "load_models",
    "prepare",
    "requested_tasks",
    "settle",
    "spec_key",
]

#: One image preprocessed for every input spec the requested models use (spec key → array).
Prepared = dict[str, np.ndarray]


class ModelSet(dict[str, LoadedModel]):
    """The requested tasks' loaded versions (task → model), plus ``evidence``: the
    models of tasks the applicability rules read that were not requested. They are
    run and judged with, never answered; a job's ``models`` lists only the requested.
    """

    def __init__(self, models: Mapping[str, LoadedModel] = (),  # type: ignore[assignment]
                 evidence: Mapping[str, LoadedModel] | None = None) -> None:
        super().__init__(models)
        self.evidence: dict[str, LoadedModel] = dict(evidence or {})

    def every(self) -> dict[str, LoadedModel]:
        """Requested and evidence models together."""
        return {**self, **self.evidence}


class Stopwatch:
    """Named laps in milliseconds, as a job result's ``timings_ms`` reports them."""

    def __init__(self) -> None:
        self.started = self._mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under ``name``."""
        now = time.perf_counter()
        self.laps[name] = round((now - self._mark) * 1000.0, 3)
        self._mark = now

    def total(self, name: str = "total") -> dict[str, float]:
        """Record the time since the start under ``name``; return every lap."""
        self.laps[name] = round((time.perf_counter() - self.started) * 1000.0, 3)
        return self.laps


def requested_tasks(runtime: WorkerRuntime, tasks: Sequence[str]) -> list[str]:
    """The task names, in order and without repeats; each must be defined.

    Raises
    ------
    InvalidRequest
        If no task is named.
    UnknownTask
        If a name is not a defined task (with the served tasks).
    """
    names = list(dict.fromkeys(tasks))
    if not names:
        raise InvalidRequest("The job names no task. Ask for at least one, e.g. 'inclination'.")
    defined = runtime.sessions.task_definitions
    unknown = [name for name in names if name not in defined]
    if unknown:
        raise UnknownTask(
            f"No such task: {', '.join(map(repr, unknown))}.",
            served_tasks=runtime.registry.tasks(),
        )
    return names


def evidence_model(model: LoadedModel) -> LoadedModel:
    """``model`` as a cheap evidence pass (:func:`services.worker.sessions.evidence_manifest`).

    The session cache builds it, fused, with every version of a task some rule reads as
    evidence, so it is one object per loaded version (the micro-batcher groups by model
    object). A version loaded without one runs its members one by one: a fused graph
    makes its own manifest's transforms and samples, so it cannot serve this pass.
    """
    if model.evidence_pass is not None:
        return model.evidence_pass
    return replace(model, manifest=evidence_manifest(model.manifest), fused=None)


def load_models(
    runtime: WorkerRuntime, tasks: Sequence[str], versions: Mapping[str, int]
) -> ModelSet:
    """The loaded version of each requested task: the pinned one, else the latest.

    The evidence tasks of the requested tasks' applicability rules are loaded too
    (pinned or latest, as a cheap :func:`evidence_model` pass) when not requested; one
    that is not served, or fails to load, is left out and the rules reading it are not
    judged.

    Raises
    ------
    SkyserveError
        InvalidRequest, UnknownTask, UnknownModelVersion, ModelIntegrityError.
    """
    names = requested_tasks(runtime, tasks)
    models = ModelSet({name: runtime.sessions.get(name, versions.get(name)) for name in names})
    definitions = runtime.sessions.task_definitions
    for name in names:
        for evidence in definitions[name].evidence_tasks:
            if evidence in models or evidence in models.evidence or evidence not in definitions:
                continue
            try:
                loaded = runtime.sessions.get(evidence, versions.get(evidence))
            except SkyserveError:  # not served here: the rules reading it stay unjudged
                continue
            models.evidence[evidence] = evidence_model(loaded)
    return models


def spec_key(model: LoadedModel) -> str:
    """The key of ``model``'s input spec in a :data:`Prepared` image."""
    return model.manifest.input.model_dump_json()


def prepare(
    image: bytes | np.ndarray | DecodedImage,
    models: Mapping[str, LoadedModel],
    *,
    max_pixels: int,
) -> Prepared:
    """Decode one image once and resize it once per distinct input spec of ``models``.

    ``image`` is encoded bytes, pixels already decoded (a target's oriented cutout), or
    a :class:`~shared.preprocessing.DecodedImage` the caller also uses (for the seen
    image). Each array is what :func:`shared.preprocessing.preprocess` gives.

    Raises
    ------
    InvalidImage, ImageTooLarge, UnsupportedMediaType
        The bytes are not a usable image.
    """
    decoded = image if isinstance(image, DecodedImage) else DecodedImage(image, max_pixels=max_pixels)
    prepared: Prepared = {}
    every = models.every() if isinstance(models, ModelSet) else models
    for model in every.values():
        key = spec_key(model)
        if key not in prepared:
            prepared[key] = decoded.model_input(model.manifest.input)
    return prepared


def answer(
    definitions: Mapping[str, TaskDefinition],
    models: Mapping[str, LoadedModel],
    images: Sequence[Prepared],
    *,
    max_batch_size: int,
    watch: Stopwatch | None = None,
) -> list[dict[str, TaskResult]]:
    """Run each task's ensemble once over all ``images``; one answer dict per image.

    Parameters
    ----------
    definitions
        Task name → definition.
    models
        Task name → loaded version (from :func:`load_models`); a :class:`ModelSet`'s
        evidence models run too, their answers only judge applicability.
    images
        Images as :func:`prepare` returns them for the same ``models``.
    max_batch_size
        Most rows given to one session run.
    watch
        Gets an ``infer:<task>`` lap per task.

    Raises
    ------
    ModelIntegrityError
        If a model's outputs do not fit its task.
    NonFiniteAnswer
        If an answer holds NaN or infinity. Inputs are finite and in [0, 1] (the
        preprocessing guarantees it), so this is a broken model version and every
        row of a batch would get it: the whole job or chunk fails, nothing non-finite
        is stored as a success.
    """
    answers: list[dict[str, TaskResult]] = [{} for _ in images]
    if not images:
        return answers
    every = models.every() if isinstance(models, ModelSet) else dict(models)
    for name, model in every.items():
        key = spec_key(model)
        batch = np.stack([image[key] for image in images])
        results = answer_task(definitions[name], name, model, batch, max_batch_size=max_batch_size)
        for slot, result in zip(answers, results, strict=True):
            if isinstance(result, NonFiniteAnswer):
                raise result
            slot[name] = result
        if watch is not None:
            watch.lap(f"infer:{name}" if name in models else f"evidence:{name}")
    return [settle(definitions, models, slot) for slot in answers]


def settle(
    definitions: Mapping[str, TaskDefinition],
    models: Mapping[str, LoadedModel],
    answers: dict[str, TaskResult],
) -> dict[str, TaskResult]:
    """One image's answers as the job reports them: each requested task with an
    applicability rule judged on everything that ran (evidence included), and the
    evidence nobody asked for dropped."""
    judged = [name for name in models if definitions[name].applicability]
    for name in judged:
        answers[name] = apply_verdict(answers[name], judge(definitions[name], answers))
    return {name: result for name, result in answers.items() if name in models}


def answer_task(
    definition: TaskDefinition,
    name: str,
    model: LoadedModel,
    images: np.ndarray,
    *,
    max_batch_size: int,
) -> list[TaskResult | NonFiniteAnswer]:
    """Run one task's ensemble once over ``images``; per image its answer, or the
    :class:`NonFiniteAnswer` it would be refused with.

    The refusal is per image so that a micro-batch of unrelated jobs
    (:mod:`services.worker.microbatch`) fails only the job it concerns; :func:`answer`
    raises the first one for a whole job or chunk.

    Raises
    ------
    ModelIntegrityError
        If a model's outputs do not fit its task.
    """
    results = predict_images(definition, model, images, max_batch_size=max_batch_size)
    return [
        result
        if _finite(result.model_dump())
        else NonFiniteAnswer(
            f"Version {model.version} of {name!r} answered NaN or infinity for this "
            "image, so no result is stored. The model is faulty; an operator has to "
            "replace it (pin another version with 'versions' meanwhile).",
            task=name,
            model_version=model.version,
        )
        for result in results
    ]


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)


def _finite(dumped: dict[str, Any]) -> bool:
    """Whether every number in a dumped answer is finite."""
    return all(math.isfinite(number) for number in _numbers(dumped))
