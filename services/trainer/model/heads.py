"""Output heads, losses and targets per task kind, and the MC-dropout model pair.

Every kind has one head (a ``Dense`` layer over the body's features), one training
loss and one exported output that :func:`shared.ensemble.activate` understands:

============== ======================= ============================== ====================
kind           head (training output)  loss                           export → activation
============== ======================= ============================== ====================
regression     Dense(1, tanh)          MSE on the range mapped to ±1  tanh → ``tanh_range``
classification Dense(C) logits         weighted softmax cross-entropy probabilities → ``identity``
multilabel     Dense(L) logits         BCE, per-label positive weight probabilities → ``identity``
vote_tree      Dense(A) logits         Dirichlet-multinomial NLL      logits → ``dirichlet``
============== ======================= ============================== ====================

Vote trees follow Zoobot: concentrations ``α = 1 + scale·sigmoid(x)`` per answer and
the negative log-likelihood of each question's vote counts under a
Dirichlet-multinomial, summed over questions; a question nobody answered contributes
exactly zero.

MC dropout that survives ONNX export (:class:`shared.registry.McDropout`): the
training model has a real ``Dropout`` between the body's features and the head;
the export model shares every weight but takes a second input ``mc_mask`` of shape
``(N, units)`` multiplied into the features instead, so the worker can draw the
masks itself. Without MC dropout the export model takes the image only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.registry import McDropout, OutputSpec
from shared.taskdefs import TaskDefinition

__all__ = [
    "DIRICHLET_SCALE",
    "MemberModels",
    "question_spans",
    "output_spec",
    "to_targets",
    "class_weights",
    "positive_weights",
    "sample_weights",
    "loss_for",
    "dirichlet_multinomial_nll",
    "dirichlet_multinomial_log_prob",
    "build_member_models",
]

DIRICHLET_SCALE = 100.0
BN_MOMENTUM = 0.9


def question_spans(task: TaskDefinition) -> list[tuple[int, int]]:
    """``[start, stop)`` of each question's answers in the flat output order."""
    if task.vote_tree is None:
        raise ValueError(f"Task {task.name!r} has no vote tree.")
    spans, start = [], 0
    for q in task.vote_tree.questions:
        spans.append((start, start + len(q.answers)))
        start += len(q.answers)
    return spans


def output_spec(task: TaskDefinition, mc: McDropout | None = None) -> OutputSpec:
    """The manifest's ``OutputSpec`` matching what :func:`build_member_models` exports."""
    activation = {
        "regression": "tanh_range",
        "classification": "identity",
        "multilabel": "identity",
        "vote_tree": "dirichlet",
    }[task.kind]
    return OutputSpec(activation=activation, dirichlet_scale=DIRICHLET_SCALE,  # type: ignore[arg-type]
                      mc_dropout=mc)


def to_targets(task: TaskDefinition, y: np.ndarray) -> np.ndarray:
    """Labels as the training loss wants them.

    regression: task range → (-1, 1) float32; classification: int32 class index;
    multilabel: float32 0/1 ``(N, L)``; vote_tree: float32 vote counts ``(N, A)``.
    """
    y = np.asarray(y)
    if task.kind == "regression":
        assert task.range is not None
        lo, hi = task.range
        return ((y.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)
    if task.kind == "classification":
        return y.astype(np.int32).reshape(-1)
    return y.astype(np.float32).reshape(len(y), -1)


def class_weights(y: np.ndarray, n_classes: int, *, cap: float = 10.0) -> np.ndarray:
    """Inverse-frequency ("balanced") class weights ``n / (C·n_c)``, capped at ``cap``.

    Classes absent from ``y`` get weight 0 (nothing to weigh). The cap stops a class
    with one or two photos from dominating the loss; weights are then rescaled so the
    average weight per training example is 1, keeping the learning rate meaningful.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    weights = np.minimum(weights, cap)
    mean = float((weights * counts).sum() / counts.sum())
    return (weights / mean).astype(np.float32)


def positive_weights(y: np.ndarray, *, rare: float = 0.25, cap: float = 4.0) -> np.ndarray:
    """Per-label weight on the positive term of the binary cross-entropy.

    A label positive in fewer than ``rare`` of the examples gets
    ``sqrt(n_negative / n_positive)`` (capped): enough to lift recall on rare
    reasons without wrecking the calibration the 0.5 threshold relies on. Common
    labels get 1.
    """
    y = np.asarray(y, dtype=np.float64)
    pos = y.mean(axis=0)
    weights = np.ones(y.shape[1])
    rare_labels = (pos > 0) & (pos < rare)
    weights[rare_labels] = np.sqrt((1.0 - pos[rare_labels]) / pos[rare_labels])
    return np.minimum(weights, cap).astype(np.float32)


def sample_weights(task: TaskDefinition, y: np.ndarray,
                   weights: np.ndarray | None) -> np.ndarray | None:
    """Per-example weights: the class weight of each example's class; None (unweighted)
    for every other kind or without class weights."""
    if task.kind == "classification" and weights is not None:
        return weights[np.asarray(y, dtype=np.int64).reshape(-1)].astype(np.float32)
    return None


# --------------------------------------------------------------------------- losses


def _lgamma(x: Any) -> Any:
    import tensorflow as tf

    return tf.math.lgamma(x)


def dirichlet_multinomial_log_prob(counts: Any, alpha: Any) -> Any:
    """Log-probability of vote ``counts`` ``(B, A)`` under concentrations ``alpha`` ``(B, A)``.

    ``log Γ(n+1) − Σ log Γ(k+1) + log Γ(A) − log Γ(n+A) + Σ [log Γ(k+α) − log Γ(α)]``
    with ``n = Σk`` and ``A = Σα``: exactly 0 when ``n = 0``.
    """
    from keras import ops

    n = ops.sum(counts, axis=-1)
    total = ops.sum(alpha, axis=-1)
    return (
        _lgamma(n + 1.0)
        - ops.sum(_lgamma(counts + 1.0), axis=-1)
        + _lgamma(total)
        - _lgamma(n + total)
        + ops.sum(_lgamma(counts + alpha) - _lgamma(alpha), axis=-1)
    )


def dirichlet_multinomial_nll(
    counts: Any, logits: Any, *, spans: list[tuple[int, int]], scale: float = DIRICHLET_SCALE
) -> Any:
    """Zoobot's loss: per-question Dirichlet-multinomial NLL, summed over questions.

    Parameters
    ----------
    counts
        ``(B, A)`` vote counts per answer (float).
    logits
        ``(B, A)`` head outputs; concentrations are ``1 + scale·sigmoid(logits)``.
    spans
        Each question's ``[start, stop)`` columns.

    Returns
    -------
    ``(B,)`` loss per example; questions with no votes contribute exactly 0.
    """
    from keras import ops

    counts = ops.cast(counts, "float32")
    alpha = 1.0 + scale * ops.sigmoid(ops.cast(logits, "float32"))
    total = 0.0
    for start, stop in spans:
        k = counts[:, start:stop]
        log_prob = dirichlet_multinomial_log_prob(k, alpha[:, start:stop])
        asked = ops.cast(ops.sum(k, axis=-1) > 0, "float32")
        total = total - asked * log_prob
    return total


def loss_for(task: TaskDefinition, *, pos_weight: np.ndarray | None = None) -> Callable[..., Any]:
    """The training loss of a task's kind, as a Keras ``loss(y_true, y_pred)`` (per example)."""
    from keras import ops

    if task.kind == "regression":
        return lambda y_true, y_pred: ops.mean(
            ops.square(ops.reshape(ops.cast(y_true, "float32"), (-1, 1)) - y_pred), axis=-1)
    if task.kind == "classification":

        def softmax_cross_entropy(y_true: Any, logits: Any) -> Any:
            labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)

        return softmax_cross_entropy
    if task.kind == "multilabel":
        weights = np.ones(len(task.output_names), np.float32) if pos_weight is None else pos_weight

        def weighted_binary_cross_entropy(y_true: Any, logits: Any) -> Any:
            y = ops.cast(y_true, "float32")
            # log σ(x) and log(1 − σ(x)) = log σ(−x), stable for any logit.
            pos = -ops.log_sigmoid(logits)
            neg = -ops.log_sigmoid(-logits)
            return ops.mean(weights * y * pos + (1.0 - y) * neg, axis=-1)

        return weighted_binary_cross_entropy
    if task.kind == "vote_tree":
        spans = question_spans(task)
        return lambda counts, logits: dirichlet_multinomial_nll(counts, logits, spans=spans)
    raise ValueError(f"No loss for task kind {task.kind!r}.")


def numpy_log_prob(counts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`dirichlet_multinomial_log_prob` (evaluation without a graph)."""
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    counts = np.asarray(counts, np.float64)
    alpha = np.asarray(alpha, np.float64)
    n, total = counts.sum(-1), alpha.sum(-1)
    return (lg(n + 1.0) - lg(counts + 1.0).sum(-1) + lg(total) - lg(n + total)
            + (lg(counts + alpha) - lg(alpha)).sum(-1))


# --------------------------------------------------------------------------- models


@dataclass
class MemberModels:
    """One member's Keras models, all sharing the same layers (so the same weights).

    ``train`` maps images to the loss's input (logits; tanh for regression) with
    dropout active in training; ``export`` is what goes to ONNX (``[image,
    mc_mask]`` → served output when ``mc`` is set); ``body`` maps images to the
    features the head reads (its weights are the transferable backbone).
    """

    train: Any
    export: Any
    body: Any
    head: Any
    mc: McDropout | None


def build_member_models(
    arch: Any,
    task: TaskDefinition,
    *,
    input_size: int,
    channels: int = 3,
    mc_rate: float = 0.0,
    mc_samples: int = 1,
    body: Any = None,
) -> MemberModels:
    """Build the training and export models of one member.

    Parameters
    ----------
    arch
        An :class:`services.trainer.model.bodies.Architecture` (or its name).
    task
        Its kind picks the head; its outputs the width.
    mc_rate
        MC-dropout rate on the features before the head; 0 disables MC dropout
        (the export model then takes the image only).
    mc_samples
        Forward passes the worker runs per image and transform (manifest).
    body
        A ready body model (image → features), e.g. a pretrained backbone; built
        from ``arch`` when None.
    """
    import keras
    from keras import layers

    from services.trainer.model.bodies import build_body, get_architecture

    if isinstance(arch, str):
        arch = get_architecture(arch)
    image = keras.Input((input_size, input_size, channels), name="image")
    if body is None:
        features = build_body(image, arch, final_dropout=mc_rate <= 0)
        body = keras.Model(image, features, name=f"body_{arch.name}")
        for layer in body.layers:
            if isinstance(layer, layers.BatchNormalization):
                # Runs here are a few hundred steps: with Keras's 0.99 the moving
                # statistics used at inference lag far behind the weights.
                layer.momentum = BN_MOMENTUM
    else:
        features = body(image)
    units = int(features.shape[-1])
    width = len(task.output_names)
    if task.kind == "regression":
        head = layers.Dense(1, activation="tanh", name="output")
    else:
        head = layers.Dense(width, name="output")

    mc = None
    if mc_rate > 0:
        mc = McDropout(samples=mc_samples, rate=mc_rate, units=units)
        train_out = head(layers.Dropout(mc_rate, name="mc_dropout")(features))
        mask = keras.Input((units,), name=mc.mask_input)
        served = head(layers.Multiply(name="mc_masked")([features, mask]))
        export_inputs: Any = [image, mask]
    else:
        train_out = head(features)
        served = head(features)
        export_inputs = image
    if task.kind == "classification":
        served = layers.Softmax(name="probabilities")(served)
    elif task.kind == "multilabel":
        served = layers.Activation("sigmoid", name="probabilities")(served)
    train = keras.Model(image, train_out, name=f"{task.name}_{arch.name}_train")
    export = keras.Model(export_inputs, served, name=f"{task.name}_{arch.name}")
    return MemberModels(train=train, export=export, body=body, head=head, mc=mc)
