"""From raw member outputs to the answer a client reads — shared by worker and trainer.

The worker serves with these functions and the trainer evaluates with them, so a
manifest's metrics describe exactly what is served (TTA median, bias correction,
ensemble median).

Raw outputs are arrays shaped ``(S, N, K)`` per member: ``S`` samples (test-time
transforms × MC-dropout passes), ``N`` images, ``K`` output columns.
"""

from __future__ import annotations

import numpy as np

from shared.registry import Manifest
from shared.schemas import MemberAnswer, QuestionResult, TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["activate", "corrected_spread", "regression_members", "summarize"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def activate(task: TaskDefinition, manifest: Manifest, raw: np.ndarray) -> np.ndarray:
    """Apply the manifest's output activation to raw outputs of shape ``(..., K)``."""
    raw = np.asarray(raw, dtype=np.float64)
    kind = manifest.output.activation
    if kind == "tanh_range":
        assert task.range is not None  # a regression task always has one
        lo, hi = task.range
        return lo + (hi - lo) * (raw + 1.0) / 2.0
    if kind == "softmax":
        shifted = np.exp(raw - raw.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if kind == "sigmoid":
        return _sigmoid(raw)
    if kind == "dirichlet":
        return 1.0 + manifest.output.dirichlet_scale * _sigmoid(raw)
    return raw


def regression_members(
    task: TaskDefinition, manifest: Manifest, raw: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated regression values.

    Returns
    -------
    values
        ``(M, N)``: each member's median over samples, bias-corrected and clipped.
    samples
        ``(M, S, N)``: each member's uncorrected value per sample.
    """
    assert task.range is not None
    lo, hi = task.range
    samples = np.stack([activate(task, manifest, raw[m.name])[..., 0] for m in manifest.members])
    values = np.median(samples, axis=1)
    if manifest.calibration is not None:
        m, b = manifest.calibration.bias_m, manifest.calibration.bias_b
        values = (values + b) / (1.0 - m)
    return np.clip(values, lo, hi), samples


def _spread(x: np.ndarray, axis: int) -> np.ndarray:
    return x.std(axis=axis, ddof=1) if x.shape[axis] > 1 else np.zeros(np.delete(x.shape, axis))


def summarize(
    task: TaskDefinition, manifest: Manifest, raw: dict[str, np.ndarray]
) -> list[TaskResult]:
    """Turn every member's raw outputs into one :class:`TaskResult` per image.

    Parameters
    ----------
    task
        The task definition (kind, range, labels, vote tree).
    manifest
        The serving version: members, activation, calibration, test-time transforms.
    raw
        Member name → ``(S, N, K)`` raw outputs.
    """
    n_images = next(iter(raw.values())).shape[1]
    common = {
        "task": task.name,
        "kind": task.kind,
        "model_version": manifest.version,
        "unit": task.unit,
        "tta": list(manifest.tta),
    }
    if task.kind == "regression":
        return _summarize_regression(task, manifest, raw, n_images, common)
    # (M, S, N, K) activated outputs
    acts = np.stack([activate(task, manifest, raw[m.name]) for m in manifest.members])
    if task.kind == "vote_tree":
        return _summarize_tree(task, manifest, acts, n_images, common)
    labels = task.output_names
    per_member = acts.mean(axis=1)  # (M, N, K)
    pooled = acts.reshape(-1, n_images, acts.shape[-1])  # every member x sample
    mean, spread = pooled.mean(axis=0), _spread(pooled, 0)
    results = []
    for i in range(n_images):
        probs = {lab: float(mean[i, k]) for k, lab in enumerate(labels)}
        value: float | str = (
            labels[int(np.argmax(mean[i]))] if task.kind == "classification" else probs[labels[0]]
        )
        members = [
            MemberAnswer(
                member=m.name,
                architecture=m.architecture,
                probabilities={lab: float(per_member[j, i, k]) for k, lab in enumerate(labels)},
            )
            for j, m in enumerate(manifest.members)
        ]
        caveat = None
        if task.kind == "classification" and value in task.unsupported_classes:
            caveat = (f"{str(value).replace('_', ' ')} is an unsupported class of this task "
                      "(too few training examples): do not trust this answer without "
                      f"looking; the next most likely is {_runner_up(probs, value)}.")
        results.append(
            TaskResult(
                **common,
                value=value,
                caveat=caveat,
                probabilities=probs,
                spread={lab: float(spread[i, k]) for k, lab in enumerate(labels)},
                members=members,
            )
        )
    return results


def corrected_spread(manifest: Manifest, samples: np.ndarray) -> np.ndarray:
    """``(N,)`` spread of every member × sample value, bias-corrected (the task's unit).

    ``samples`` is ``(M, S, N)`` as :func:`regression_members` returns it; the
    correction ``(v + b)/(1 − m)`` scales a spread by ``1/(1 − m)``.
    """
    pooled = samples.reshape(-1, samples.shape[-1])
    spread = _spread(pooled, 0)
    if manifest.calibration is not None:
        spread = spread / (1.0 - manifest.calibration.bias_m)
    return spread


def _runner_up(probs: dict[str, float], top: object) -> str:
    label, p = max(((k, v) for k, v in probs.items() if k != top), key=lambda kv: kv[1],
                   default=("none", 0.0))
    return f"{label.replace('_', ' ')} ({100.0 * p:.0f} %)"


def _summarize_regression(task, manifest, raw, n_images, common) -> list[TaskResult]:
    values, samples = regression_members(task, manifest, raw)
    spread = corrected_spread(manifest, samples)
    calibration = manifest.calibration
    results = []
    for i in range(n_images):
        v = values[:, i]
        extra = {"spread": float(spread[i])}
        error = calibration.error(float(spread[i])) if calibration is not None else None
        if error is not None:  # the calibrated 1σ error of this answer
            extra["error"] = float(error)
        members = [
            MemberAnswer(
                member=m.name,
                architecture=m.architecture,
                value=float(v[j]),
                tta_values=[float(s) for s in samples[j, :, i]],
            )
            for j, m in enumerate(manifest.members)
        ]
        results.append(
            TaskResult(
                **common,
                value=float(np.median(v)),
                summary={
                    "mean": float(v.mean()),
                    "median": float(np.median(v)),
                    "stdev": float(_spread(v, 0)),
                    "min": float(v.min()),
                    "max": float(v.max()),
                    **extra,
                },
                members=members,
                calibration=manifest.calibration,
            )
        )
    return results


def _summarize_tree(task, manifest, acts, n_images, common) -> list[TaskResult]:
    assert task.vote_tree is not None
    questions = task.vote_tree.questions
    # Concentrations → expected vote fractions per question.
    fractions = np.empty_like(acts)
    start = 0
    spans: dict[str, tuple[int, int]] = {}
    for q in questions:
        stop = start + len(q.answers)
        block = acts[..., start:stop]
        fractions[..., start:stop] = block / block.sum(axis=-1, keepdims=True)
        spans[q.name] = (start, stop)
        start = stop
    per_member = fractions.mean(axis=1)
    pooled = fractions.reshape(-1, n_images, fractions.shape[-1])
    mean, spread = pooled.mean(axis=0), _spread(pooled, 0)
    columns = task.output_names
    results = []
    for i in range(n_images):
        reached: dict[str, float] = {}
        out: dict[str, QuestionResult] = {}
        for q in questions:
            lo, hi = spans[q.name]
            if q.depends_on is None:
                reached[q.name] = 1.0
            else:
                parent, _, answer = q.depends_on.partition(":")
                plo, _ = spans[parent]
                parent_q = next(p for p in questions if p.name == parent)
                reached[q.name] = reached[parent] * float(mean[i, plo + parent_q.answers.index(answer)])
            out[q.name] = QuestionResult(
                reached=reached[q.name],
                fractions={a: float(mean[i, lo + k]) for k, a in enumerate(q.answers)},
                spread={a: float(spread[i, lo + k]) for k, a in enumerate(q.answers)},
            )
        members = [
            MemberAnswer(
                member=m.name,
                architecture=m.architecture,
                probabilities={c: float(per_member[j, i, k]) for k, c in enumerate(columns)},
            )
            for j, m in enumerate(manifest.members)
        ]
        results.append(TaskResult(**common, questions=out, members=members))
    return results
