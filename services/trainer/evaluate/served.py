"""What an evaluation measures: the answers :mod:`shared.members` serves, as arrays.

:func:`serve` runs a version's members on held-out images through
:func:`shared.members.answer` — the function the worker answers jobs with — and
:func:`outputs` turns the answers into the ``(N, K)`` array the metrics are computed
from: the served value (regression), probabilities (classification, multilabel) or
vote fractions (vote tree), one column per task output. So every figure in a
``metrics.json`` is a figure of what the worker answers for the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.members import Ensemble, answer
from shared.registry import Manifest
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["SERVE_BATCH", "Served", "Context", "serve", "outputs"]

#: Rows per session run when evaluating (the worker's default max_batch_size).
SERVE_BATCH = 256


@dataclass
class Served:
    """The answers for a set of images and the raw member outputs behind them."""

    results: list[TaskResult]
    raw: dict[str, np.ndarray]  # member → (S, N, K)
    values: np.ndarray  # (N, K): see outputs()


def outputs(task: TaskDefinition, results: Sequence[TaskResult]) -> np.ndarray:
    """``(N, K)`` served values, one column per output of ``task``.

    Regression: the answer's value (``K = 1``); classification and multilabel: the
    ensemble's probabilities; vote tree: the expected vote fractions, in
    ``task.output_names`` order.
    """
    if task.kind == "regression":
        return np.array([[float(r.value)] for r in results], dtype=np.float64)  # type: ignore[arg-type]
    if task.kind == "vote_tree":
        assert task.vote_tree is not None
        return np.array([[r.questions[q.name].fractions[a]  # type: ignore[index]
                          for q in task.vote_tree.questions for a in q.answers]
                         for r in results], dtype=np.float64)
    return np.array([[r.probabilities[c] for c in task.output_names]  # type: ignore[index]
                     for r in results], dtype=np.float64)


def serve(task: TaskDefinition, manifest: Manifest, runners: Ensemble,
          x: np.ndarray, *, max_batch_size: int = SERVE_BATCH) -> Served:
    """Answer every image of ``x`` exactly as the worker would with this version."""
    results, raw = answer(task, manifest, runners, x, max_batch_size=max_batch_size)
    return Served(results, raw, outputs(task, results))


@dataclass
class Context:
    """What one evaluation needs besides the data.

    ``calibrate`` fits what the task kind fits on validation (a regression's error
    model) into the manifest; False evaluates the manifest as it is (a published
    version). ``bias`` also tries a regression's bias correction, kept only where it
    helps on held-out validation halves. Plots go into ``folder``.
    """

    task: TaskDefinition
    manifest: Manifest
    runners: Ensemble
    folder: Path
    calibrate: bool = True
    bias: bool = False
    failures: int = 12
    max_batch_size: int = SERVE_BATCH
    plots: list[str] = field(default_factory=list)

    def serve(self, x: np.ndarray, manifest: Manifest | None = None) -> Served:
        """:func:`serve` with this context's (or the given) manifest."""
        return serve(self.task, manifest or self.manifest, self.runners, x,
                     max_batch_size=self.max_batch_size)

    def plot(self, name: str | list[str]) -> None:
        """Record plot file(s) written into ``folder``."""
        self.plots += [name] if isinstance(name, str) else list(name)

    def info(self) -> dict[str, Any]:
        """How the answers were made, for ``metrics.json``."""
        mc = self.manifest.output.mc_dropout
        return {"tta": list(self.manifest.tta), "mc_samples": mc.samples if mc else 0,
                "served_by": "shared.members.answer (the worker's inference path)"}
