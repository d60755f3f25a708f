"""Regression evaluation: IncliNET's bias correction, fitted and inverted the way
shared.ensemble serves it, and the metrics per bin."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.evaluate.regression import (
    bias_helps,
    by_bin,
    error_metrics,
    fit_bias,
    fit_error,
    regression_metrics,
)


def test_fit_bias_recovers_a_known_linear_pull() -> None:
    truth = np.linspace(45.0, 90.0, 200)
    m, b = 0.1, -6.0
    predicted = truth - (m * truth + b)  # i_m - i_p = m i_m + b
    calibration = fit_bias(truth, predicted)
    assert calibration.bias_m == pytest.approx(m, abs=1e-9)
    assert calibration.bias_b == pytest.approx(b, abs=1e-7)
    served = (predicted + calibration.bias_b) / (1.0 - calibration.bias_m)
    assert np.allclose(served, truth)


def test_fit_bias_refuses_to_blow_up_a_model_that_ignores_its_input() -> None:
    truth = np.linspace(45.0, 90.0, 50)
    calibration = fit_bias(truth, np.full_like(truth, 60.0))
    assert calibration.bias_m == 0.0
    assert calibration.bias_b == pytest.approx(float(np.mean(truth - 60.0)))


def test_bias_correction_is_kept_only_where_it_helps_on_held_out_halves() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(45.0, 90.0, 400)
    noise = rng.normal(0.0, 2.0, truth.size)
    pulled = truth - (0.15 * truth - 10.0) + noise  # a real pull towards the middle
    kept = bias_helps(truth, pulled)
    assert kept["kept"] and kept["heldout_rms_with"] < kept["heldout_rms_without"] - 0.3
    unbiased = truth + noise  # nothing to correct: a fit only chases noise
    dropped = bias_helps(truth, unbiased)
    assert not dropped["kept"]
    assert dropped["heldout_rms_with"] >= dropped["heldout_rms_without"]


def test_regression_metrics() -> None:
    out = regression_metrics(np.array([50.0, 60.0]), np.array([53.0, 56.0]))
    assert out["rms_deg"] == pytest.approx(np.sqrt(12.5))
    assert out["mae_deg"] == pytest.approx(3.5)
    assert out["within_5deg"] == 1.0


def test_rms_per_bin_of_the_range() -> None:
    truth = np.array([45.0, 49.0, 50.0, 89.0, 90.0])
    pred = truth + np.array([1.0, 1.0, 2.0, -3.0, 3.0])
    bins = by_bin(truth, pred, 45.0, 90.0)
    assert list(bins) == ["45-50", "50-55", "85-90"]  # empty bins left out; 90 in the last
    assert bins["45-50"] == pytest.approx(1.0) and bins["85-90"] == pytest.approx(3.0)


def test_fit_error_recovers_a_known_error_model_and_its_coverage() -> None:
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.2, 3.0, 20_000)
    residual = rng.normal(0.0, np.hypot(1.5, 2.0 * spread))
    a, k = fit_error(residual, spread)
    assert a == pytest.approx(1.5, rel=0.05) and k == pytest.approx(2.0, rel=0.05)
    covered = error_metrics(residual, np.hypot(a, k * spread))
    assert covered["error_coverage_1sigma"] == pytest.approx(0.683, abs=0.01)
    assert covered["error_coverage_2sigma"] == pytest.approx(0.954, abs=0.01)
    # A spread that says nothing about the error: everything goes into the floor.
    a, k = fit_error(rng.normal(0.0, 2.0, 20_000), rng.uniform(0.2, 3.0, 20_000))
    assert a == pytest.approx(2.0, rel=0.05) and k < 0.1
