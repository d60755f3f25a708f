"""Heads and losses: the Dirichlet-multinomial NLL against a hand computation, weights, MC models."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from services.trainer.model.heads import (  # noqa: E402
    build_member_models,
    class_weights,
    dirichlet_multinomial_nll,
    loss_for,
    numpy_log_prob,
    output_spec,
    positive_weights,
    question_spans,
)
from shared.taskdefs import get_task_definition  # noqa: E402

MORPHOLOGY = get_task_definition("morphology")


def _hand_nll(counts: list[float], alpha: list[float]) -> float:
    """-log DirMult(k | alpha) written out with math.lgamma, term by term."""
    n, a = sum(counts), sum(alpha)
    log_p = math.lgamma(n + 1) - sum(math.lgamma(k + 1) for k in counts)
    log_p += math.lgamma(a) - math.lgamma(n + a)
    log_p += sum(math.lgamma(k + al) - math.lgamma(al) for k, al in zip(counts, alpha))
    return -log_p


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_dirichlet_multinomial_loss_matches_a_hand_computation_summed_over_questions() -> None:
    spans = question_spans(MORPHOLOGY)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 17)).astype(np.float32)
    counts = rng.integers(0, 15, size=(3, 17)).astype(np.float32)
    counts[1, 3:6] = 0  # nobody was asked how-rounded for image 1
    counts[2, 8:] = 0  # image 2: only the first two questions were asked
    alpha = 1.0 + 100.0 * _sigmoid(logits.astype(np.float64))
    expected = [sum(_hand_nll(list(counts[i, a:b]), list(alpha[i, a:b])) for a, b in spans
                    if counts[i, a:b].sum() > 0) for i in range(3)]
    got = np.asarray(dirichlet_multinomial_nll(counts, logits, spans=spans))
    np.testing.assert_allclose(got, expected, rtol=2e-5)
    np.testing.assert_allclose(-numpy_log_prob(counts[0, :3], alpha[0, :3]),
                               _hand_nll(list(counts[0, :3]), list(alpha[0, :3])), rtol=1e-10)
    # The Keras loss is the same per-example function.
    np.testing.assert_allclose(np.asarray(loss_for(MORPHOLOGY)(counts, logits)), expected, rtol=2e-5)


def test_unasked_questions_contribute_exactly_zero_whatever_the_logits() -> None:
    spans = question_spans(MORPHOLOGY)
    counts = np.zeros((2, 17), np.float32)
    counts[:, 0:3] = [[10, 3, 0], [10, 3, 0]]  # only the root question answered
    logits = np.zeros((2, 17), np.float32)
    logits[1, 3:] = np.random.default_rng(1).normal(scale=5.0, size=14)  # wild elsewhere
    got = np.asarray(dirichlet_multinomial_nll(counts, logits, spans=spans))
    assert got[0] == pytest.approx(got[1], abs=1e-6)
    assert got[0] == pytest.approx(_hand_nll([10, 3, 0], [51.0, 51.0, 51.0]), rel=1e-5)
    assert float(np.asarray(dirichlet_multinomial_nll(np.zeros((1, 17), np.float32),
                                                      logits[1:], spans=spans))[0]) == 0.0


def test_class_weights_balance_capped_and_mean_one_per_example() -> None:
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = class_weights(y, 4)
    assert w[3] == 0.0  # absent class
    assert w[0] < w[1] < w[2]
    assert float((w[y]).mean()) == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(10.0 / (100 / (3 * 90)))  # class 2 capped at 10
    pw = positive_weights(np.array([[1, 1, 0]] * 2 + [[1, 0, 0]] * 18, np.float32))
    np.testing.assert_allclose(pw, [1.0, 3.0, 1.0])  # rare label: sqrt(18 / 2)


@pytest.mark.parametrize("name", ["object-type", "rejection", "morphology", "inclination"])
def test_export_model_shares_weights_and_the_mask_input_replaces_dropout(name: str) -> None:
    task = get_task_definition(name)
    models = build_member_models("tiny", task, input_size=32, mc_rate=0.25, mc_samples=4)
    x = np.random.default_rng(2).random((3, 32, 32, 3), dtype=np.float32)
    units = models.mc.units  # type: ignore[union-attr]
    ones = np.ones((3, units), np.float32)
    served = np.asarray(models.export([x, ones], training=False))
    logits = np.asarray(models.train(x, training=False))
    kind = output_spec(task, models.mc).activation
    if task.kind == "classification":
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(served, e / e.sum(1, keepdims=True), atol=1e-6)
    elif task.kind == "multilabel":
        np.testing.assert_allclose(served, _sigmoid(logits), atol=1e-6)
    else:  # tanh in the graph (regression) or raw logits (vote tree)
        np.testing.assert_allclose(served, logits, atol=1e-6)
    assert kind == {"classification": "identity", "multilabel": "identity",
                    "vote_tree": "dirichlet", "regression": "tanh_range"}[task.kind]
    assert served.shape == (3, len(task.output_names))
    zeros = np.asarray(models.export([x, np.zeros_like(ones)], training=False))
    assert not np.allclose(zeros, served)  # the mask really reaches the head
    assert np.asarray(models.train(x, training=True)).shape == served.shape
