"""Answer a task for preprocessed images with a loaded version's ONNX Runtime sessions.

The loop over members × test-time transforms × MC-dropout samples and the summary
live in :mod:`shared.members`, which the trainer evaluates with too; this module
only turns a :class:`~services.worker.sessions.LoadedModel` into its runners: the
fused session of all members when the version has one, else a runner per member.
"""

from __future__ import annotations

import numpy as np

from services.worker.sessions import LoadedModel
from shared.members import answer
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["predict"]


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
    results, _ = answer(task, model.manifest, model.ensemble(), images,
                        max_batch_size=max_batch_size)
    return results
