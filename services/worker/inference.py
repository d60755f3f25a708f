"""Run an ensemble on preprocessed images and summarise it, for any kind of task.

Every member sees every image under every test-time transform of the manifest; the
transformed copies are stacked into one batch and run in chunks of at most
``max_batch_size``. The raw outputs, shaped ``(S, N, K)`` per member, go to
:func:`shared.ensemble.summarize`, the same code the trainer evaluates with.

MC dropout (``manifest.output.mc_dropout``) is not applied yet: ``S`` is the number
of test-time transforms.
"""

from __future__ import annotations

import numpy as np

from services.worker.sessions import LoadedModel
from shared.ensemble import summarize
from shared.errors import ModelIntegrityError
from shared.preprocessing import tta_transform
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["predict", "run_members"]


def run_members(
    model: LoadedModel, images: np.ndarray, *, max_batch_size: int
) -> dict[str, np.ndarray]:
    """Raw outputs of every member under every test-time transform.

    Parameters
    ----------
    model
        The loaded version (its manifest names the transforms).
    images
        ``(N, H, W, C)`` float32, as :func:`shared.preprocessing.preprocess` makes them.
    max_batch_size
        Most rows given to one session run.

    Returns
    -------
    dict
        Member name → ``(S, N, K)`` float32 array, ``S = len(manifest.tta)``.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    images = np.asarray(images, dtype=np.float32)
    transforms = model.manifest.tta or ["identity"]
    n_images = images.shape[0]
    # One contiguous (S*N, H, W, C) batch: rot180 etc. are negative-stride views.
    stacked = np.ascontiguousarray(np.concatenate([tta_transform(images, t) for t in transforms]))
    raw: dict[str, np.ndarray] = {}
    for member in model.members:
        chunks = [
            member.session.run(
                [member.output_name], {member.input_name: stacked[start : start + max_batch_size]}
            )[0]
            for start in range(0, stacked.shape[0], max_batch_size)
        ]
        out = np.concatenate(chunks).astype(np.float32, copy=False)
        raw[member.member.name] = out.reshape(len(transforms), n_images, -1)
    return raw


def predict(
    task: TaskDefinition, model: LoadedModel, images: np.ndarray, *, max_batch_size: int
) -> list[TaskResult]:
    """Answer ``task`` for each image: every member's answer plus the ensemble summary.

    Parameters
    ----------
    task
        The task definition (kind, range, labels, vote tree).
    model
        A loaded version of that task.
    images
        ``(N, H, W, C)`` float32 preprocessed for ``model.manifest.input``.
    max_batch_size
        Most rows given to one session run.

    Returns
    -------
    list of TaskResult
        One per image, in order.

    Raises
    ------
    ModelIntegrityError
        If a member's outputs do not have one column per task output.
    """
    if images.shape[0] == 0:
        return []
    raw = run_members(model, images, max_batch_size=max_batch_size)
    columns = len(task.output_names)
    for name, out in raw.items():
        if out.shape[-1] != columns:
            raise ModelIntegrityError(
                f"{model.task} v{model.version} member {name} gives {out.shape[-1]} outputs "
                f"per image; task {task.name!r} needs {columns}."
            )
    return summarize(task, model.manifest, raw)
