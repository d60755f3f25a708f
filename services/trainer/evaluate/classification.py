"""Classification: the served class is the arg-max of the ensemble's mean probabilities.

``macro_recall`` averages recall over the classes present in the evaluation set;
``confusion[i][j]`` counts images of true class i answered as class j. The task
definition's ``unsupported_classes`` (too few training examples) are reported apart:
``supported_accuracy`` and ``supported_macro_recall`` are measured on the images of
supported classes only (an answer naming an unsupported class counts as wrong) and
are the headline; ``unsupported_top_share`` is how often the top class of an answer
is unsupported (such answers carry a caveat).
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

__all__ = ["classification_metrics", "evaluate"]


def classification_metrics(task: TaskDefinition, truth: np.ndarray,
                           prob: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro recall over present classes, per-class recall/precision, confusion."""
    labels = task.output_names
    truth = np.asarray(truth, np.int64)
    pred = prob.argmax(axis=1)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    recall = {lab: (float(confusion[k, k] / support[k]) if support[k] else None)
              for k, lab in enumerate(labels)}
    precision = {lab: (float(confusion[k, k] / predicted[k]) if predicted[k] else None)
                 for k, lab in enumerate(labels)}
    present = [r for r in recall.values() if r is not None]
    p_true = np.clip(prob[np.arange(len(truth)), truth], 1e-7, 1.0)
    unsupported = [labels.index(c) for c in task.unsupported_classes]
    supported = ~np.isin(truth, unsupported)
    supported_recall = [r for lab, r in recall.items()
                        if r is not None and lab not in task.unsupported_classes]
    return {
        "supported_classes": [lab for lab in labels if lab not in task.unsupported_classes],
        "n_supported": int(supported.sum()),
        "supported_accuracy": (float(np.mean(pred[supported] == truth[supported]))
                               if supported.any() else None),
        "supported_macro_recall": (float(np.mean(supported_recall))
                                   if supported_recall else None),
        "unsupported_top_share": float(np.mean(np.isin(pred, unsupported))),
        "n": int(len(truth)),
        "accuracy": float(np.mean(pred == truth)),
        "macro_recall": float(np.mean(present)) if present else None,
        "macro_recall_classes": int(len(present)),
        "per_class_recall": recall,
        "per_class_precision": precision,
        "support": {lab: int(support[k]) for k, lab in enumerate(labels)},
        "confusion_labels": labels,
        "confusion": confusion.tolist(),
        "log_loss": float(-np.mean(np.log(p_true))),
        "reliability": reliability(prob.max(axis=1), pred == truth),
    }


def evaluate(ctx: Context, test: LabelledSet,
             val: LabelledSet | None) -> tuple[Manifest, dict[str, Any]]:
    """Metrics of the served probabilities on ``test``; confusion, reliability, failures."""
    task, labels = ctx.task, ctx.task.output_names
    y = np.asarray(test.y, np.int64)
    probs = ctx.serve(test.x).values
    metrics = classification_metrics(task, y, probs)
    ctx.plot(plots.confusion_plot(ctx.folder, metrics["confusion"], labels,
                                  title=f"{task.name}: confusion (n={len(y)})"))
    ctx.plot(plots.reliability_plot(ctx.folder, {"top-1 probability": metrics["reliability"]},
                                    title=f"{task.name}: reliability of the top class"))
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][: ctx.failures]
    ctx.plot(plots.failures_plot(ctx.folder, test.x[worst], [
        plots.caption(test.ids, k, f"true {labels[y[k]]}\npred {labels[pred[k]]} "
                                   f"{probs[k, pred[k]]:.2f}") for k in worst]))
    return ctx.manifest, metrics
