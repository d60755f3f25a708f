"""Vote trees: served vote fractions against the volunteers' votes, and the mixture NLL.

A question is *confidently answered* for an image when the volunteers' **reach** —
the votes it got divided by the votes on the root question — is ≥ 0.5 and it got
≥ 10 votes. ``vote_fraction_mae`` is the mean absolute difference between served
and observed vote fractions over every answer of every confidently answered
question. ``nll`` is the mean over images of the Dirichlet-multinomial negative
log-likelihood of all its vote counts under the served ensemble (the mixture of
every member × transform × MC sample), summed over questions (unasked questions
contribute 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.trainer.data.labelled import LabelledSet
from services.trainer.evaluate import plots
from services.trainer.evaluate.reliability import reliability
from services.trainer.evaluate.served import Context
from services.trainer.model.heads import numpy_log_prob, question_spans
from shared.ensemble import activate
from shared.registry import Manifest
from shared.taskdefs import TaskDefinition

__all__ = ["CONFIDENT_REACH", "CONFIDENT_VOTES", "confident_questions", "vote_tree_metrics",
           "evaluate"]

CONFIDENT_REACH = 0.5
CONFIDENT_VOTES = 10


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
            "vote_fraction_mae_all_asked": (float(err[n[:, 0] > 0].mean()) if (n > 0).any()
                                            else None),
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


def evaluate(ctx: Context, test: LabelledSet,
             val: LabelledSet | None) -> tuple[Manifest, dict[str, Any]]:
    """Metrics of the served vote fractions on ``test``; fractions, reliability, root
    confusion and failures plots."""
    task = ctx.task
    assert task.vote_tree is not None
    y = np.asarray(test.y)
    served = ctx.serve(test.x)
    probs = served.values
    metrics = vote_tree_metrics(task, ctx.manifest, served.raw, y, probs, test.expected)
    confident = confident_questions(task, y)
    spans = question_spans(task)
    counts = y.astype(np.float64)
    observed = np.concatenate([counts[:, a:b] / np.maximum(counts[:, a:b].sum(1, keepdims=True),
                                                           1.0) for a, b in spans], axis=1)
    questions = [(q.name, q.answers, a) for q, (a, _) in zip(task.vote_tree.questions, spans)]
    ctx.plot(plots.vote_fraction_plot(ctx.folder, questions, probs, observed, confident))
    asked = np.concatenate([np.repeat(counts[:, a:b].sum(1, keepdims=True) > 0, b - a, 1)
                            for a, b in spans], axis=1)
    metrics["reliability"] = reliability(probs[asked], observed[asked])
    ctx.plot(plots.reliability_plot(ctx.folder, {"asked answers": metrics["reliability"]},
                                    title="Predicted vs observed vote fraction (binned)"))
    root = task.vote_tree.questions[0]
    a, b = spans[0]
    sure = confident[:, 0]
    root_confusion = np.zeros((b - a, b - a), np.int64)
    np.add.at(root_confusion, (observed[sure, a:b].argmax(1), probs[sure, a:b].argmax(1)), 1)
    metrics["root_confusion_labels"] = root.answers
    metrics["root_confusion"] = root_confusion.tolist()
    ctx.plot(plots.confusion_plot(ctx.folder, root_confusion.tolist(), root.answers,
                                  title=f"{root.name}: majority answer (confident)"))
    per_image = np.array([np.abs(probs[i] - observed[i])[
        np.repeat(confident[i], [b - a for a, b in spans])].mean()
        if confident[i].any() else 0.0 for i in range(len(y))])
    worst = np.argsort(-per_image)[: ctx.failures]
    ctx.plot(plots.failures_plot(ctx.folder, test.x[worst], [
        plots.caption(test.ids, k, f"MAE {per_image[k]:.2f} {root.answers[0][:6]} "
                                   f"obs {observed[k, 0]:.2f} pred {probs[k, 0]:.2f}")
        for k in worst]))
    return ctx.manifest, metrics
