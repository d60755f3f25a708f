"""Multilabel: a label is predicted when its served probability is ≥ 0.5.

``accuracy``, ``precision`` and ``recall`` at the top level are those of the first
label (``reject`` for the rejection task); ``labels`` holds them for every label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.trainer.data.labelled import LabelledSet
from services.trainer.evaluate import plots
from services.trainer.evaluate.reliability import reliability
from services.trainer.evaluate.served import Context
from shared.registry import Manifest
from shared.taskdefs import TaskDefinition

__all__ = ["binary_metrics", "multilabel_metrics", "evaluate"]


def binary_metrics(truth: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, counts, Brier score and log loss at p ≥ 0.5."""
    truth = truth.astype(bool)
    pred = prob >= 0.5
    tp, fp = int(np.sum(pred & truth)), int(np.sum(pred & ~truth))
    fn, tn = int(np.sum(~pred & truth)), int(np.sum(~pred & ~truth))
    eps = 1e-7
    p = np.clip(prob, eps, 1 - eps)
    return {
        "accuracy": (tp + tn) / max(1, len(truth)),
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "support": int(truth.sum()),
        "predicted_positive": int(pred.sum()),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "brier": float(np.mean((prob - truth) ** 2)),
        "log_loss": float(-np.mean(truth * np.log(p) + (~truth) * np.log(1 - p))),
    }


def multilabel_metrics(task: TaskDefinition, truth: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """Per-label accuracy, precision, recall (threshold 0.5); the first label at the top."""
    labels = task.output_names
    per = {lab: binary_metrics(truth[:, k], prob[:, k]) for k, lab in enumerate(labels)}
    head = per[labels[0]]
    return {
        "n": int(len(truth)),
        "headline_label": labels[0],
        "accuracy": head["accuracy"],
        "precision": head["precision"],
        "recall": head["recall"],
        "f1": head["f1"],
        "labels": per,
        "mean_label_accuracy": float(np.mean([per[lab]["accuracy"] for lab in labels])),
        "exact_match": float(np.mean(np.all((prob >= 0.5) == truth.astype(bool), axis=1))),
        "reliability": reliability(prob.ravel(), truth.ravel()),
    }


def evaluate(ctx: Context, test: LabelledSet,
             val: LabelledSet | None) -> tuple[Manifest, dict[str, Any]]:
    """Metrics of the served probabilities on ``test``; confusion, labels, reliability, failures."""
    task, labels = ctx.task, ctx.task.output_names
    y = np.asarray(test.y)
    probs = ctx.serve(test.x).values
    metrics = multilabel_metrics(task, y, probs)
    head = metrics["labels"][labels[0]]
    ctx.plot(plots.confusion_plot(
        ctx.folder, [[head["tn"], head["fp"]], [head["fn"], head["tp"]]],
        [f"not {labels[0]}", labels[0]], title=f"{task.name}: {labels[0]} (p >= 0.5)"))
    ctx.plot(plots.label_bars_plot(ctx.folder, metrics["labels"]))
    ctx.plot(plots.reliability_plot(
        ctx.folder, {lab: reliability(probs[:, k], y[:, k]) for k, lab in enumerate(labels)},
        title=f"{task.name}: reliability per label"))
    worst = np.argsort(-np.abs(probs[:, 0] - y[:, 0]))[: ctx.failures]
    ctx.plot(plots.failures_plot(ctx.folder, test.x[worst], [
        plots.caption(test.ids, k, f"{labels[0]} true {int(y[k, 0])} p {probs[k, 0]:.2f}\n"
                      + ",".join(lab for j, lab in enumerate(labels[1:], 1) if y[k, j]))
        for k in worst]))
    return ctx.manifest, metrics
