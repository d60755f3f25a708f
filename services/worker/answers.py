"""From image bytes to per-task answers: the one path single jobs and batch chunks share.

:func:`prepare` decodes and resizes one image once per distinct input spec (a batch
calls it from its fetch threads, one row at a time); :func:`answer` stacks prepared
images and runs each task's ensemble once over all of them, so a chunk of rows is
one batch per task, and a single job is simply a batch of one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from services.worker.inference import predict as predict_images
from services.worker.runtime import WorkerRuntime
from services.worker.sessions import LoadedModel
from shared.errors import InvalidRequest, NonFiniteAnswer, UnknownTask
from shared.preprocessing import DecodedImage
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["Prepared", "Stopwatch", "answer", "load_models", "prepare", "requested_tasks"]

#: One image preprocessed for every input spec the requested models use (spec key → array).
Prepared = dict[str, np.ndarray]


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


def load_models(
    runtime: WorkerRuntime, tasks: Sequence[str], versions: Mapping[str, int]
) -> dict[str, LoadedModel]:
    """The loaded version of each requested task: the pinned one, else the latest.

    Raises
    ------
    SkyserveError
        InvalidRequest, UnknownTask, UnknownModelVersion, ModelIntegrityError.
    """
    names = requested_tasks(runtime, tasks)
    return {name: runtime.sessions.get(name, versions.get(name)) for name in names}


def _spec_key(model: LoadedModel) -> str:
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
    for model in models.values():
        key = _spec_key(model)
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
        Task name → loaded version (from :func:`load_models`).
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
    for name, model in models.items():
        key = _spec_key(model)
        batch = np.stack([image[key] for image in images])
        results = predict_images(definitions[name], model, batch, max_batch_size=max_batch_size)
        for slot, result in zip(answers, results, strict=True):
            if not _finite(result.model_dump()):
                raise NonFiniteAnswer(
                    f"Version {model.version} of {name!r} answered NaN or infinity for this "
                    "image, so no result is stored. The model is faulty; an operator has to "
                    "replace it (pin another version with 'versions' meanwhile).",
                    task=name,
                    model_version=model.version,
                )
            slot[name] = result
        if watch is not None:
            watch.lap(f"infer:{name}")
    return answers


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
