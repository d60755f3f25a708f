"""A labelled training set for any task: model inputs, labels, ids, per-example truth, provenance.

The scene builders (``services.trainer.scenes``) and the photo reader
(``services.trainer.photos``) both return a :class:`LabelledSet`, so the training
pipeline consumes one shape whatever the task:

- multilabel (rejection): ``y`` float32 ``(N, L)`` of 0/1 in the task's label order;
- vote tree (morphology): ``y`` int32 ``(N, A)`` vote counts in ``output_names`` order;
- classification (object type): ``y`` int64 ``(N,)`` class index into the task's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LabelledSet"]


@dataclass
class LabelledSet:
    """Model inputs with their labels, ready for training.

    Attributes
    ----------
    x
        ``(N, S, S, C)`` float32, exactly what ``shared.preprocessing.preprocess`` made.
    y
        Labels, one row per example (see the module docstring for each task's format).
    ids
        A unique, stable id per example.
    truth
        Per-example truth for evaluation plots (JSON-able dicts).
    description
        How the set was made, for the manifest (JSON-able).
    task
        The task definition's name (``rejection``, ``morphology``, ``object-type``).
    label_names
        Column names of ``y`` (multilabel, vote tree) or class names (classification).
    """

    x: np.ndarray
    y: np.ndarray
    ids: list[str]
    truth: list[dict[str, Any]]
    description: dict[str, Any]
    task: str = ""
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.x)
        if not (len(self.y) == len(self.ids) == len(self.truth) == n):
            raise ValueError(
                f"A labelled set needs one label, id and truth per input: x has {n}, "
                f"y {len(self.y)}, ids {len(self.ids)}, truth {len(self.truth)}."
            )

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledSet:
        """The examples at ``index`` (copies); the description is shared."""
        index = np.asarray(index, dtype=np.int64)
        return LabelledSet(
            x=self.x[index],
            y=self.y[index],
            ids=[self.ids[i] for i in index],
            truth=[self.truth[i] for i in index],
            description=self.description,
            task=self.task,
            label_names=list(self.label_names),
        )

    def label_counts(self) -> dict[str, int]:
        """Examples per class (classification), positives per label (multilabel),
        or total votes per answer (vote tree), keyed by ``label_names``."""
        if self.y.ndim == 1:
            counts = np.bincount(self.y.astype(np.int64), minlength=len(self.label_names))
        else:
            counts = np.rint(self.y.sum(axis=0)).astype(np.int64)
        return {name: int(c) for name, c in zip(self.label_names, counts)}
