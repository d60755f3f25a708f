"""Held-out evaluation of exported members, computed the way the worker serves them.

:func:`evaluate_task` evaluates any task kind and writes its plots; the metric
definitions are in :mod:`services.trainer.scoring`. For regression, raw outputs
come from ONNX Runtime sessions over each test-time transform of the manifest; :func:`shared.ensemble.regression_members` and
:func:`shared.ensemble.summarize` turn them into served values (TTA median, bias
correction, clipping, ensemble median). The bias correction is fitted on the
validation set, never on the test set, and the classical axis-ratio estimate
``cos² i = (q² − q0²)/(1 − q0²)`` on the measured images is the baseline to beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.trainer.export import onnx_predict
from services.trainer.synthetic import inclination_from_axis_ratio
from shared.ensemble import regression_members, summarize
from shared.preprocessing import tta_transform
from shared.registry import Calibration, Manifest
from shared.taskdefs import TaskDefinition

if TYPE_CHECKING:
    from services.trainer.labelled import LabelledSet

__all__ = [
    "evaluate_task",
    "raw_outputs",
    "fit_bias",
    "served_values",
    "regression_metrics",
    "evaluate_regression",
    "write_plots",
]

BASELINE_Q0 = 0.2


def raw_outputs(
    sessions: dict[str, Any], x: np.ndarray, tta: list[str]
) -> dict[str, np.ndarray]:
    """Member name → raw outputs ``(S, N, K)``, one sample per test-time transform."""
    return {
        name: np.stack([onnx_predict(session, tta_transform(x, t)) for t in tta])
        for name, session in sessions.items()
    }


def fit_bias(truth: np.ndarray, predicted: np.ndarray, *, max_abs_m: float = 0.5) -> Calibration:
    """Fit IncliNET's ``i_m − i_p = m·i_m + b`` (least squares, ``i_m`` the truth).

    Served as ``(i_p + b) / (1 − m)``, which undoes the pull of predictions towards
    the middle of the range. A slope beyond ``max_abs_m`` means the model barely
    follows the truth (an untrained or broken model); dividing by ``1 − m`` would
    then blow its noise up, so only the mean offset is corrected (``m = 0``).
    """
    truth = np.asarray(truth, np.float64)
    residual = truth - np.asarray(predicted, np.float64)
    m, b = np.polyfit(truth, residual, 1)
    if not abs(m) <= max_abs_m:
        m, b = 0.0, float(np.mean(residual))
    return Calibration(bias_m=float(m), bias_b=float(b))


def served_values(
    task: TaskDefinition, manifest: Manifest, raw: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(headline (N,), members (M, N))`` exactly as the worker would answer."""
    members, _ = regression_members(task, manifest, raw)
    answers = summarize(task, manifest, raw)
    headline = np.array([float(r.value) for r in answers])  # type: ignore[arg-type]
    return headline, members


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMS, MAE, mean and max error, and the share within 5°."""
    err = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    return {
        "rms_deg": float(np.sqrt(np.mean(err**2))),
        "mae_deg": float(np.mean(np.abs(err))),
        "mean_error_deg": float(np.mean(err)),
        "max_abs_error_deg": float(np.max(np.abs(err))),
        "within_5deg": float(np.mean(np.abs(err) <= 5.0)),
    }


def _by_bin(truth: np.ndarray, predicted: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    out = {}
    for start in np.arange(lo, hi, 5.0):
        stop = start + 5.0
        sel = (truth >= start) & ((truth < stop) if stop < hi else (truth <= hi))
        if sel.any():
            out[f"{start:g}-{stop:g}"] = float(np.sqrt(np.mean((predicted[sel] - truth[sel]) ** 2)))
    return out


def evaluate_regression(
    task: TaskDefinition,
    manifest: Manifest,
    sessions: dict[str, Any],
    *,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_measured_q: np.ndarray | None = None,
) -> tuple[Manifest, dict[str, Any], dict[str, np.ndarray]]:
    """Fit the bias correction on validation, then measure the served answers on test.

    Parameters
    ----------
    manifest
        Members, TTA and output spec; its calibration is replaced by the fitted one.
    sessions
        Member name → ONNX Runtime session.
    test_measured_q
        Axis ratios measured on the test images, for the classical baseline.

    Returns
    -------
    manifest
        A copy carrying the fitted calibration.
    metrics
        Test metrics (headline, per member, baseline, per 5° bin).
    curves
        Arrays for the plots.
    """
    assert task.range is not None
    lo, hi = task.range
    uncalibrated = manifest.model_copy(update={"calibration": None})
    val_raw = raw_outputs(sessions, val_x, manifest.tta)
    val_pred, _ = served_values(task, uncalibrated, val_raw)
    calibration = fit_bias(val_y, val_pred)
    calibrated = manifest.model_copy(update={"calibration": calibration})

    test_raw = raw_outputs(sessions, test_x, manifest.tta)
    raw_pred, _ = served_values(task, uncalibrated, test_raw)
    pred, members = served_values(task, calibrated, test_raw)
    metrics: dict[str, Any] = {
        "n_val": int(len(val_y)),
        "n_test": int(len(test_y)),
        **regression_metrics(test_y, pred),
        "rms_deg_uncalibrated": regression_metrics(test_y, raw_pred)["rms_deg"],
        "mae_deg_uncalibrated": regression_metrics(test_y, raw_pred)["mae_deg"],
        "bias_m": calibration.bias_m,
        "bias_b": calibration.bias_b,
        "val_rms_deg": regression_metrics(
            val_y, served_values(task, calibrated, val_raw)[0]
        )["rms_deg"],
        "members": {
            m.name: {k: v for k, v in regression_metrics(test_y, members[j]).items()
                     if k in ("rms_deg", "mae_deg")}
            for j, m in enumerate(manifest.members)
        },
        "rms_deg_by_bin": _by_bin(test_y, pred, lo, hi),
        "tta": list(manifest.tta),
    }
    curves: dict[str, np.ndarray] = {"truth": test_y, "pred": pred, "raw_pred": raw_pred}
    if test_measured_q is not None:
        ok = np.isfinite(test_measured_q)
        baseline = np.clip(inclination_from_axis_ratio(test_measured_q[ok], BASELINE_Q0), lo, hi)
        base = regression_metrics(test_y[ok], baseline)
        metrics.update(
            baseline_axis_ratio_rms_deg=base["rms_deg"],
            baseline_axis_ratio_mae_deg=base["mae_deg"],
            baseline_axis_ratio_q0=BASELINE_Q0,
            baseline_axis_ratio_n=int(ok.sum()),
            baseline_axis_ratio_note=(
                "cos^2 i = (q^2 - q0^2)/(1 - q0^2) with q from adaptive second moments "
                "(galsim.hsm) of each noisy r-band test image, clipped to the task range; "
                "images where the moments did not converge are left out."
            ),
        )
        curves["baseline_truth"], curves["baseline"] = test_y[ok], baseline
    return calibrated, metrics, curves


def write_plots(
    folder: Path, curves: dict[str, np.ndarray], calibration: Calibration, task: TaskDefinition
) -> list[str]:
    """Write ``pred_vs_true.png`` and ``residuals.png``; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert task.range is not None
    lo, hi = task.range
    truth, pred, raw = curves["truth"], curves["pred"], curves["raw_pred"]
    grid = np.linspace(lo, hi, 50)
    m, b = calibration.bias_m, calibration.bias_b

    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=90)
    ax.scatter(truth, raw, s=4, alpha=0.35, color="tab:gray", label="ensemble, uncorrected")
    ax.scatter(truth, pred, s=4, alpha=0.5, color="tab:blue", label="served (bias-corrected)")
    ax.plot(grid, (1.0 - m) * grid - b, color="tab:red",
            label=f"fitted bias: i_p = (1-m) i_m - b, m={m:.3f}, b={b:.2f}")
    ax.plot(grid, grid, color="black", lw=0.8, ls="--", label="identity")
    ax.set(xlabel=f"true {task.name} [{task.unit}]", ylabel=f"predicted [{task.unit}]",
           xlim=(lo - 1, hi + 1), ylim=(lo - 1, hi + 1), title="Held-out synthetic test set")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "pred_vs_true.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=90)
    if "baseline" in curves:
        ax.scatter(curves["baseline_truth"], curves["baseline"] - curves["baseline_truth"], s=4,
                   alpha=0.3, color="tab:orange", label="axis-ratio baseline (q0 = 0.2)")
    ax.scatter(truth, pred - truth, s=4, alpha=0.5, color="tab:blue", label="served ensemble")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(xlabel=f"true {task.name} [{task.unit}]", ylabel=f"predicted - true [{task.unit}]",
           ylim=(-20, 20), title="Residuals vs truth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "residuals.png")
    plt.close(fig)
    return ["pred_vs_true.png", "residuals.png"]


def _caption(ids: list[str], k: int, text: str) -> str:
    return f"{ids[k][-26:]}\n{text}"


def evaluate_task(task: TaskDefinition, manifest: Manifest, sessions: dict[str, Any],
                  test: LabelledSet, folder: Path, *, failures: int = 12,
                  val: LabelledSet | None = None,
                  expected: np.ndarray | None = None) -> tuple[Manifest, dict[str, Any]]:
    """Metrics and plots of the served answers on ``test``; plots go into ``folder``.

    Regression fits the bias correction on ``val`` first (never on ``test``) and
    returns the manifest with its calibration.
    """
    from services.trainer import plots, scoring

    raw = scoring.raw_outputs(sessions, manifest, test.x)
    names: list[str] = []
    y = np.asarray(test.y)
    if task.kind == "regression":
        if val is None:
            raise ValueError("A regression release needs a validation set for the bias fit.")
        manifest, metrics, curves = evaluate_regression(
            task, manifest, sessions, val_x=val.x, val_y=np.asarray(val.y, np.float64),
            test_x=test.x, test_y=y.astype(np.float64))
        names += write_plots(folder, curves, manifest.calibration, task)  # type: ignore[arg-type]
        err = np.abs(curves["pred"] - curves["truth"])
        worst = np.argsort(-err)[:failures]
        names.append(plots.failures_plot(folder, test.x[worst], [
            _caption(test.ids, k, f"true {curves['truth'][k]:.1f} pred {curves['pred'][k]:.1f}")
            for k in worst], title="Largest errors (served, bias-corrected)"))
        metrics["plots"] = names
        return manifest, metrics
    probs = scoring.served_probabilities(task, manifest, raw)
    labels = task.output_names
    if task.kind == "classification":
        metrics = scoring.classification_metrics(task, y, probs)
        names.append(plots.confusion_plot(folder, metrics["confusion"], labels,
                                          title=f"{task.name}: confusion (n={len(y)})"))
        names.append(plots.reliability_plot(folder, {"top-1 probability": metrics["reliability"]},
                                            title=f"{task.name}: reliability of the top class"))
        pred = probs.argmax(axis=1)
        wrong = np.flatnonzero(pred != y)
        worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:failures]
        caption = [_caption(test.ids, k, f"true {labels[y[k]]}\npred {labels[pred[k]]} "
                            f"{probs[k, pred[k]]:.2f}") for k in worst]
    elif task.kind == "multilabel":
        metrics = scoring.multilabel_metrics(task, y, probs)
        head = metrics["labels"][labels[0]]
        names.append(plots.confusion_plot(
            folder, [[head["tn"], head["fp"]], [head["fn"], head["tp"]]],
            [f"not {labels[0]}", labels[0]], title=f"{task.name}: {labels[0]} (p >= 0.5)"))
        names.append(plots.label_bars_plot(folder, metrics["labels"]))
        names.append(plots.reliability_plot(
            folder, {lab: scoring.reliability(probs[:, k], y[:, k]) for k, lab in
                     enumerate(labels)}, title=f"{task.name}: reliability per label"))
        err = np.abs(probs[:, 0] - y[:, 0])
        worst = np.argsort(-err)[:failures]
        caption = [_caption(test.ids, k, f"{labels[0]} true {int(y[k, 0])} p {probs[k, 0]:.2f}\n"
                            + ",".join(lab for j, lab in enumerate(labels[1:], 1) if y[k, j]))
                   for k in worst]
    elif task.kind == "vote_tree":
        assert task.vote_tree is not None
        metrics = scoring.vote_tree_metrics(task, manifest, raw, y, probs, expected)
        confident = scoring.confident_questions(task, y)
        spans = scoring.question_spans(task)
        counts = y.astype(np.float64)
        observed = np.concatenate([counts[:, a:b] / np.maximum(counts[:, a:b].sum(1, keepdims=True),
                                                               1.0) for a, b in spans], axis=1)
        questions = [(q.name, q.answers, a) for q, (a, _) in zip(task.vote_tree.questions, spans)]
        names.append(plots.vote_fraction_plot(folder, questions, probs, observed, confident))
        asked = np.concatenate([np.repeat(counts[:, a:b].sum(1, keepdims=True) > 0, b - a, 1)
                                for a, b in spans], axis=1)
        metrics["reliability"] = scoring.reliability(probs[asked], observed[asked])
        names.append(plots.reliability_plot(
            folder, {"asked answers": metrics["reliability"]},
            title="Predicted vs observed vote fraction (binned)"))
        root = task.vote_tree.questions[0]
        a, b = spans[0]
        sure = confident[:, 0]
        root_confusion = np.zeros((b - a, b - a), np.int64)
        np.add.at(root_confusion, (observed[sure, a:b].argmax(1), probs[sure, a:b].argmax(1)), 1)
        metrics["root_confusion_labels"] = root.answers
        metrics["root_confusion"] = root_confusion.tolist()
        names.append(plots.confusion_plot(folder, root_confusion.tolist(), root.answers,
                                          title=f"{root.name}: majority answer (confident)"))
        per_image = np.array([np.abs(probs[i] - observed[i])[
            np.repeat(confident[i], [b - a for a, b in spans])].mean()
            if confident[i].any() else 0.0 for i in range(len(y))])
        worst = np.argsort(-per_image)[:failures]
        caption = [_caption(test.ids, k, f"MAE {per_image[k]:.2f} {root.answers[0][:6]} "
                            f"obs {observed[k, 0]:.2f} pred {probs[k, 0]:.2f}") for k in worst]
    else:  # pragma: no cover - the task kinds are closed
        raise ValueError(f"Unknown task kind {task.kind!r}.")
    names.append(plots.failures_plot(folder, test.x[worst], caption))
    metrics["plots"] = names
    return manifest, metrics
