"""Regression: served values vs truth, IncliNET's bias correction, the axis-ratio baseline.

The bias correction ``i_m − i_p = m·i_m + b``, where the recipe asks for it, is
fitted on the validation set's served (uncorrected) answers, never on the test set,
and kept only if it helps on held-out data: fitted on one half of the validation
set it must lower the RMS on the other half, both ways round (:func:`bias_helps`).
Kept, it is stored in the manifest and applied when serving. Metrics are those of the served, corrected answers on the
test set, with and without the correction, per member and per bin of the range.
Where the test set carries measured axis ratios (``truth["measured_axis_ratio"]``,
the synthetic galaxies' test split), the classical estimate
``cos² i = (q² − q0²)/(1 − q0²)`` is the baseline to beat.

Each answer's error, ``σ = sqrt(a² + (k·spread)²)`` with ``spread`` the spread of
its bias-corrected member × transform × sample values, is fitted on the validation
set too (:func:`fit_error`, Gaussian likelihood of the residuals) and stored in the
manifest's calibration; the test set says how often the truth falls within ±σ and
±2σ (``error_coverage_1sigma``, ``_2sigma``: 0.683 and 0.954 if σ is right).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.trainer.data.labelled import LabelledSet
from services.trainer.data.render import inclination_from_axis_ratio
from services.trainer.evaluate import plots
from services.trainer.evaluate.served import Context
from shared.ensemble import summarize
from shared.registry import Calibration, Manifest

__all__ = ["BASELINE_Q0", "BINS", "fit_bias", "bias_helps", "fit_error", "error_metrics", "regression_metrics",
           "by_bin", "evaluate"]

BASELINE_Q0 = 0.2
BINS = 9  # equal bins over the task range: 5 degrees for inclination's 45-90


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


def bias_helps(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Does the bias correction help on data it was not fitted on? Two-fold: fitted on
    the even-indexed half it is applied to the odd one and back; kept when the pooled
    held-out RMS goes down. Returns the verdict and both RMS figures."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    halves = [np.arange(len(truth))[i::2] for i in (0, 1)]
    corrected = predicted.copy()
    for fit_on, apply_to in (halves, halves[::-1]):
        c = fit_bias(truth[fit_on], predicted[fit_on])
        corrected[apply_to] = (predicted[apply_to] + c.bias_b) / (1.0 - c.bias_m)
    without = float(np.sqrt(np.mean((predicted - truth) ** 2)))
    with_it = float(np.sqrt(np.mean((corrected - truth) ** 2)))
    return {"kept": with_it < without, "heldout_rms_with": with_it,
            "heldout_rms_without": without}


def fit_error(residual: np.ndarray, spread: np.ndarray) -> tuple[float, float]:
    """``(a, k)`` of ``σ = sqrt(a² + (k·spread)²)`` maximising the Gaussian likelihood of
    ``residual`` (served − truth on held-out data).

    A grid over ``a`` (log-spaced up to the residuals' RMS × 2) and ``k`` (0–10), refined
    once around the best cell: two parameters need nothing cleverer, and the grid
    cannot diverge where the spread says nothing (``k`` → 0).
    """
    r2 = np.asarray(residual, np.float64) ** 2
    s2 = np.asarray(spread, np.float64) ** 2
    rms = float(np.sqrt(r2.mean())) or 1e-6

    def best(a_grid: np.ndarray, k_grid: np.ndarray) -> tuple[float, float]:
        a2 = (a_grid**2)[:, None, None]
        k2 = (k_grid**2)[None, :, None]
        var = a2 + k2 * s2[None, None, :]
        nll = (np.log(var) + r2[None, None, :] / var).sum(axis=-1)
        i, j = np.unravel_index(np.argmin(nll), nll.shape)
        return float(a_grid[i]), float(k_grid[j])

    a, k = best(np.geomspace(rms * 1e-3, rms * 2.0, 60), np.linspace(0.0, 10.0, 51))
    a, k = best(np.geomspace(a / 1.2, a * 1.2, 41), np.linspace(max(k - 0.2, 0.0), k + 0.2, 41))
    return a, k


def error_metrics(residual: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """How often ``|residual|`` is within the stated 1σ and 2σ, and the σ's typical size."""
    residual, sigma = np.abs(np.asarray(residual, np.float64)), np.asarray(sigma, np.float64)
    return {
        "error_coverage_1sigma": float(np.mean(residual <= sigma)),
        "error_coverage_2sigma": float(np.mean(residual <= 2.0 * sigma)),
        "error_median_deg": float(np.median(sigma)),
        "error_rms_deg": float(np.sqrt(np.mean(sigma**2))),
    }


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMS, MAE, mean and max error, and the share within 5 units."""
    err = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    return {
        "rms_deg": float(np.sqrt(np.mean(err**2))),
        "mae_deg": float(np.mean(np.abs(err))),
        "mean_error_deg": float(np.mean(err)),
        "max_abs_error_deg": float(np.max(np.abs(err))),
        "within_5deg": float(np.mean(np.abs(err) <= 5.0)),
    }


def by_bin(truth: np.ndarray, predicted: np.ndarray, lo: float, hi: float,
           bins: int = BINS) -> dict[str, float]:
    """RMS per equal bin of ``[lo, hi]`` (the last bin closed), keyed ``"lo-hi"``."""
    out = {}
    width = (hi - lo) / bins
    for start in lo + width * np.arange(bins):
        stop = start + width
        sel = (truth >= start) & ((truth < stop) if stop < hi - 1e-9 else (truth <= hi))
        if sel.any():
            out[f"{start:g}-{stop:g}"] = float(np.sqrt(np.mean((predicted[sel] - truth[sel]) ** 2)))
    return out


def _baseline(test: LabelledSet, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray] | None:
    measured = np.array([t.get("measured_axis_ratio", np.nan) for t in test.truth], np.float32)
    ok = np.isfinite(measured)
    if not ok.any():
        return None
    truth = np.asarray(test.y, np.float64)[ok]
    return truth, np.clip(inclination_from_axis_ratio(measured[ok], BASELINE_Q0), lo, hi)


def evaluate(ctx: Context, test: LabelledSet,
             val: LabelledSet | None) -> tuple[Manifest, dict[str, Any]]:
    """Fit the error model (and, with ``ctx.bias``, the bias correction where it helps) on
    ``val`` when ``ctx.calibrate``, then measure ``test``.

    Returns the manifest carrying the calibration and the metrics; plots
    ``pred_vs_true.png``, ``residuals.png`` and ``failures.png`` go to ``ctx.folder``.
    """
    task = ctx.task
    assert task.range is not None
    lo, hi = task.range
    manifest = ctx.manifest
    uncalibrated = manifest.model_copy(update={"calibration": None})
    val_served = ctx.serve(val.x, uncalibrated) if val is not None else None
    bias_check: dict[str, Any] | None = None
    if ctx.calibrate and val_served is not None:
        assert val is not None
        val_truth = np.asarray(val.y, np.float64)
        calibration = Calibration()  # no correction: i_p served as it is
        if ctx.bias:
            bias_check = bias_helps(val_truth, val_served.values[:, 0])
            if bias_check["kept"]:
                calibration = fit_bias(val_truth, val_served.values[:, 0])
        corrected = summarize(task, manifest.model_copy(update={"calibration": calibration}),
                              val_served.raw)
        a, k = fit_error(np.array([float(r.value) for r in corrected]) - val_truth,  # type: ignore[arg-type]
                         np.array([r.summary["spread"] for r in corrected]))  # type: ignore[index]
        calibration = calibration.model_copy(update={"error_floor": a, "error_spread_scale": k})
        manifest = manifest.model_copy(update={"calibration": calibration})
    truth = np.asarray(test.y, np.float64)
    served = ctx.serve(test.x, manifest)
    pred = served.values[:, 0]
    members = np.array([[m.value for m in r.members] for r in served.results]).T  # (M, N)
    raw_pred = np.array([r.value for r in summarize(task, uncalibrated, served.raw)], np.float64)
    metrics: dict[str, Any] = {
        "n_val": len(val) if val is not None else 0,
        "n_test": len(test),
        **regression_metrics(truth, pred),
        "rms_deg_uncalibrated": regression_metrics(truth, raw_pred)["rms_deg"],
        "mae_deg_uncalibrated": regression_metrics(truth, raw_pred)["mae_deg"],
    }
    if bias_check is not None:
        metrics.update(bias_correction="kept" if bias_check["kept"] else "dropped",
                       bias_heldout_rms_with=bias_check["heldout_rms_with"],
                       bias_heldout_rms_without=bias_check["heldout_rms_without"])
    elif ctx.calibrate:
        metrics["bias_correction"] = "not tried (recipe)"
    if manifest.calibration is not None:
        metrics.update(bias_m=manifest.calibration.bias_m, bias_b=manifest.calibration.bias_b)
        sigma = [r.summary.get("error") for r in served.results]  # type: ignore[union-attr]
        if all(e is not None for e in sigma):  # versions with an error model
            metrics.update(error_floor=manifest.calibration.error_floor,
                           error_spread_scale=manifest.calibration.error_spread_scale,
                           **error_metrics(pred - truth, np.asarray(sigma, np.float64)))
    if val_served is not None:
        val_pred = np.array([r.value for r in summarize(task, manifest, val_served.raw)])
        metrics["val_rms_deg"] = regression_metrics(np.asarray(val.y), val_pred)["rms_deg"]  # type: ignore[union-attr]
    metrics["members"] = {
        m.name: {k: v for k, v in regression_metrics(truth, members[j]).items()
                 if k in ("rms_deg", "mae_deg")}
        for j, m in enumerate(manifest.members)
    }
    metrics["rms_deg_by_bin"] = by_bin(truth, pred, lo, hi)
    baseline = _baseline(test, lo, hi)
    if baseline is not None:
        base = regression_metrics(*baseline)
        metrics.update(
            baseline_axis_ratio_rms_deg=base["rms_deg"],
            baseline_axis_ratio_mae_deg=base["mae_deg"],
            baseline_axis_ratio_q0=BASELINE_Q0,
            baseline_axis_ratio_n=int(len(baseline[0])),
            baseline_axis_ratio_note=(
                "cos^2 i = (q^2 - q0^2)/(1 - q0^2) with q from adaptive second moments "
                "(galsim.hsm) of each noisy r-band test image, clipped to the task range; "
                "images where the moments did not converge are left out."),
        )
    calibration = manifest.calibration
    ctx.plot(plots.regression_plots(
        ctx.folder, truth, pred, raw_pred, span=(lo, hi), name=task.name, unit=task.unit,
        bias=(calibration.bias_m, calibration.bias_b) if calibration else None,
        baseline=baseline, title=f"Held-out {test.description.get('split', 'test')} set"))
    worst = np.argsort(-np.abs(pred - truth))[: ctx.failures]
    ctx.plot(plots.failures_plot(ctx.folder, test.x[worst], [
        plots.caption(test.ids, k, f"true {truth[k]:.1f} pred {pred[k]:.1f}") for k in worst],
        title="Largest errors (served)"))
    return manifest, metrics
