"""Held-out evaluation of a version's ONNX members, computed from what the worker serves.

Every metric is measured on the answers of :func:`shared.members.answer` — the
worker's own inference path — over the test set (:mod:`.served`): members ×
test-time transforms × MC-dropout samples with the worker's per-image masks, then
``shared.ensemble.summarize``. What is measured and plotted depends on the task's
kind, one module each:

============== ======================================================================
kind           module
============== ======================================================================
regression     :mod:`.regression` — bias correction fitted on validation, baseline
classification :mod:`.classification` — accuracy, macro recall, confusion
multilabel     :mod:`.multilabel` — per-label precision and recall at p ≥ 0.5
vote_tree      :mod:`.vote_tree` — vote-fraction MAE on confident questions, NLL
============== ======================================================================
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from services.trainer.data.labelled import LabelledSet
from services.trainer.evaluate.served import SERVE_BATCH, Context, Served, outputs, serve
from shared.members import Ensemble
from shared.registry import Manifest
from shared.taskdefs import TaskDefinition

__all__ = ["KINDS", "Served", "evaluate", "outputs", "serve"]

#: Task kind → the module that measures it.
KINDS = {kind: f"services.trainer.evaluate.{kind}"
         for kind in ("regression", "classification", "multilabel", "vote_tree")}


def evaluate(task: TaskDefinition, manifest: Manifest, runners: Ensemble,
             test: LabelledSet, folder: Path, *, val: LabelledSet | None = None,
             calibrate: bool = True, bias: bool = False, failures: int = 12,
             max_batch_size: int = SERVE_BATCH) -> tuple[Manifest, dict[str, Any]]:
    """Metrics and plots of the served answers on ``test``; plots go into ``folder``.

    Parameters
    ----------
    manifest
        The version as it will be (or is) served; its ``version`` seeds the MC masks.
    runners
        The members as served: fused or one per member, in manifest order
        (:func:`services.trainer.export.onnx_ensemble`).
    val
        The validation set: what the kind fits there (a regression's error model,
        with ``calibrate``) is fitted on it, never on ``test``.
    calibrate
        False evaluates ``manifest`` as it is (re-evaluating a published version).
    bias
        With ``calibrate``: also try a regression's bias correction, kept only where
        it helps on held-out halves of ``val`` (:func:`.regression.bias_helps`).

    Returns
    -------
    manifest
        ``manifest`` with what was fitted (e.g. its calibration).
    metrics
        The kind's metrics, ``plots`` (file names) and how the answers were made.
    """
    if task.kind not in KINDS:
        raise ValueError(f"No evaluation for task kind {task.kind!r}.")
    ctx = Context(task, manifest, runners, Path(folder), calibrate=calibrate, bias=bias,
                  failures=failures, max_batch_size=max_batch_size)
    manifest, metrics = importlib.import_module(KINDS[task.kind]).evaluate(ctx, test, val)
    metrics.update(ctx.info(), plots=ctx.plots)
    return manifest, metrics
