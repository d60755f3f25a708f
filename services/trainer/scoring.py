"""Held-out metrics for every task kind, computed from the answers the worker would serve.

Raw outputs come from the exported ONNX members under the manifest's test-time
transforms and MC-dropout samples, stacked and masked exactly as
``services.worker.inference.run_members`` does; :func:`shared.ensemble.summarize`
turns them into answers; the metrics are measured on those answers.

Definitions
-----------
multilabel
    A label is predicted when its served probability is ≥ 0.5. ``accuracy``,
    ``precision`` and ``recall`` at the top level are those of the first label
    (``reject`` for the rejection task); ``labels`` holds them for every label.
classification
    The served class is the arg-max of the ensemble's mean probabilities.
    ``macro_recall`` averages recall over the classes present in the evaluation
    set; ``confusion[i][j]`` counts images of true class i answered as class j.
vote_tree
    A question is *confidently answered* for an image when the volunteers'
    **reach** — the votes it got divided by the votes on the root question —
    is ≥ 0.5 and it got ≥ 10 votes. ``vote_fraction_mae`` is the mean absolute
    difference between served and observed vote fractions over every answer of
    every confidently answered question. ``nll`` is the mean over images of the
    Dirichlet-multinomial negative log-likelihood of all its vote counts under the
    served ensemble (the mixture of every member × transform × MC sample), summed
    over questions (unasked questions contribute 0).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from services.trainer.heads import numpy_log_prob, question_spans
from shared.ensemble import activate, summarize
from shared.preprocessing import tta_transform
from shared.registry import Manifest
from shared.taskdefs import TaskDefinition

__all__ = [
    "CONFIDENT_REACH",
    "CONFIDENT_VOTES",
    "raw_outputs",
    "served_probabilities",
    "multilabel_metrics",
    "classification_metrics",
    "vote_tree_metrics",
    "reliability",
]

CONFIDENT_REACH = 0.5
CONFIDENT_VOTES = 10


def _masks(x: np.ndarray, manifest: Manifest, member: int, rows: int) -> np.ndarray:
    """Scaled Bernoulli keep-masks, seeded like the worker's (images, version, member)."""
    mc = manifest.output.mc_dropout
    assert mc is not None
    digest = hashlib.blake2b(np.ascontiguousarray(x, np.float32).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng([int.from_bytes(digest, "little"), manifest.version, member])
    keep = 1.0 - mc.rate
    return (rng.random((rows, mc.units), dtype=np.float32) < keep).astype(np.float32) / keep


def raw_outputs(
    sessions: dict[str, Any], manifest: Manifest, x: np.ndarray, *, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Member name → ``(S, N, K)`` raw outputs, S = transforms × MC samples.

    The images are evaluated in chunks of ``batch_size`` (each chunk gets its own
    masks, as the worker's batches do), then concatenated along ``N``.
    """
    transforms = manifest.tta or ["identity"]
    mc = manifest.output.mc_dropout
    samples = mc.samples if mc else 1
    out: dict[str, list[np.ndarray]] = {m.name: [] for m in manifest.members}
    for start in range(0, len(x), batch_size):
        images = np.asarray(x[start : start + batch_size], np.float32)
        stacked = np.ascontiguousarray(np.concatenate([tta_transform(images, t)
                                                       for t in transforms]))
        if mc:
            stacked = np.ascontiguousarray(np.tile(stacked, (samples, 1, 1, 1)))
        for m, member in enumerate(manifest.members):
            session = sessions[member.name]
            feeds = {manifest.input.input_name: stacked}
            if mc:
                feeds[mc.mask_input] = _masks(images, manifest, m, len(stacked))
            result = np.concatenate([
                session.run(None, {k: v[i : i + batch_size] for k, v in feeds.items()})[0]
                for i in range(0, len(stacked), batch_size)
            ]).astype(np.float32)
            out[member.name].append(result.reshape(samples * len(transforms), len(images), -1))
    return {name: np.concatenate(parts, axis=1) for name, parts in out.items()}


def served_probabilities(task: TaskDefinition, manifest: Manifest,
                         raw: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, K)`` served probabilities (classification/multilabel) or vote fractions (tree)."""
    results = summarize(task, manifest, raw)
    columns = task.output_names
    if task.kind == "vote_tree":
        assert task.vote_tree is not None
        return np.array([[r.questions[q.name].fractions[a]  # type: ignore[index]
                          for q in task.vote_tree.questions for a in q.answers]
                         for r in results])
    return np.array([[r.probabilities[c] for c in columns] for r in results])  # type: ignore[index]


def _binary(truth: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
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


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Reliability curve (mean confidence vs observed frequency per bin) and the ECE."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, freq = float(confidence[sel].mean()), float(correct[sel].mean())
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                         "confidence": conf, "frequency": freq})
            ece += sel.mean() * abs(conf - freq)
    return {"bins": rows, "ece": float(ece)}


def multilabel_metrics(task: TaskDefinition, truth: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """Per-label accuracy, precision, recall (threshold 0.5); the first label at the top."""
    labels = task.output_names
    per = {lab: _binary(truth[:, k], prob[:, k]) for k, lab in enumerate(labels)}
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
    return {
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


def confident_questions(task: TaskDefinition, counts: np.ndarray) -> np.ndarray:
    """``(N, Q)`` mask of confidently answered questions (reach ≥ 0.5 and ≥ 10 votes)."""
    spans = question_spans(task)
    votes = np.stack([counts[:, a:b].sum(axis=1) for a, b in spans], axis=1).astype(np.float64)
    root = np.maximum(votes[:, :1], 1.0)
    return (votes / root >= CONFIDENT_REACH) & (votes >= CONFIDENT_VOTES)


def vote_tree_metrics(task: TaskDefinition, manifest: Manifest, raw: dict[str, np.ndarray],
                      counts: np.ndarray, fractions: np.ndarray,
                      expected: np.ndarray | None = None) -> dict[str, Any]:
    """Vote-fraction MAE on confident questions, NLL of the served mixture, per question.

    ``expected`` (``(N, A)``, optional): the answer probabilities the votes were drawn
    from (synthetic data). Then ``vote_fraction_mae_expected`` compares the served
    fractions with them, and ``vote_fraction_mae_floor`` is the MAE the exact
    probabilities themselves score against the observed votes — the part of
    ``vote_fraction_mae`` that is volunteer sampling noise, which no model can remove.
    """
    assert task.vote_tree is not None
    spans = question_spans(task)
    counts = np.asarray(counts, np.float64)
    confident = confident_questions(task, counts)
    # (M*S, N, A) concentrations of every member x transform x MC sample
    alphas = np.concatenate([activate(task, manifest, raw[m.name]) for m in manifest.members])
    errors, per_question, nll = [], {}, np.zeros(len(counts))
    vs_expected: list[np.ndarray] = []
    floor: list[np.ndarray] = []
    majority_hits: list[bool] = []
    for (a, b), q, c in zip(spans, task.vote_tree.questions, confident.T):
        n = counts[:, a:b].sum(axis=1, keepdims=True)
        observed = counts[:, a:b] / np.maximum(n, 1.0)
        err = np.abs(fractions[:, a:b] - observed)
        errors.append(err[c].ravel())
        if expected is not None:
            vs_expected.append(np.abs(fractions[:, a:b] - expected[:, a:b])[c].ravel())
            floor.append(np.abs(expected[:, a:b] - observed)[c].ravel())
        # log of the mixture probability: log mean_s p(k | alpha_s), per image.
        log_p = numpy_log_prob(counts[None, :, a:b], alphas[:, :, a:b])  # (S, N)
        top = log_p.max(axis=0)
        mixture = top + np.log(np.mean(np.exp(log_p - top), axis=0))
        nll -= np.where(n[:, 0] > 0, mixture, 0.0)
        strong = c & (observed.max(axis=1) >= 0.8)
        hits = fractions[strong, a:b].argmax(axis=1) == observed[strong].argmax(axis=1)
        majority_hits.extend(hits.tolist())
        per_question[q.name] = {
            "confident_images": int(c.sum()),
            "vote_fraction_mae": float(err[c].mean()) if c.any() else None,
            "vote_fraction_mae_all_asked": float(err[n[:, 0] > 0].mean()) if (n > 0).any() else None,
            "nll": float(-np.mean(np.where(n[:, 0] > 0, mixture, 0.0))),
        }
    flat = np.concatenate(errors) if errors else np.zeros(0)
    return {
        "n": int(len(counts)),
        "vote_fraction_mae": float(flat.mean()) if flat.size else None,
        "confident_definition": (f"question reach (its votes / root-question votes) >= "
                                 f"{CONFIDENT_REACH} and >= {CONFIDENT_VOTES} votes"),
        "confident_question_answers": int(flat.size),
        **({"vote_fraction_mae_expected": float(np.concatenate(vs_expected).mean()),
            "vote_fraction_mae_floor": float(np.concatenate(floor).mean()),
            "expected_definition": ("served fractions vs the answer probabilities the "
                                    "simulated volunteers voted with (same questions); the "
                                    "floor is those exact probabilities vs the observed votes")}
           if expected is not None and flat.size else {}),
        "nll": float(nll.mean()),
        "nll_definition": ("mean over images of -log p(vote counts) under the served mixture "
                           "(members x transforms x MC samples) of Dirichlet-multinomials, "
                           "summed over questions; unasked questions contribute 0"),
        "confident_answer_accuracy": float(np.mean(majority_hits)) if majority_hits else None,
        "confident_answer_definition": ("share of confidently answered questions whose "
                                        "volunteer majority had >= 80 % of the votes where "
                                        "the served arg-max answer matches it"),
        "questions": per_question,
    }
