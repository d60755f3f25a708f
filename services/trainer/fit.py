"""Trains bagged ensemble members for any task kind, from scratch or from a pretrained body.

Each member trains on its own random subset of the training set (IncliNET's
"flavors", 67 % by default) with the head and loss of the task's kind
(:mod:`services.trainer.heads`), random flips and 90° rotations per batch, and
per-example weights (class weights for classification). From scratch: AdamW with
cosine decay, early stopping on the validation loss. From a pretrained body
(Zoobot-style fine-tuning): first the new head alone with the body frozen, then
the top block(s) of the body unfrozen with a lower, decaying learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.trainer.dataset import dihedral
from services.trainer.heads import (
    MemberModels,
    build_member_models,
    class_weights,
    loss_for,
    positive_weights,
    sample_weights,
    to_targets,
)
from shared.taskdefs import TaskDefinition

__all__ = ["FineTune", "FitConfig", "FittedMember", "Weighting", "weighting_for",
           "fit_members", "unfreeze_top_blocks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTune:
    """Two-stage fine-tuning of a pretrained body (Zoobot's recipe).

    Stage 1 trains the new head for ``head_epochs`` at ``head_learning_rate`` with
    the whole body frozen (its batch-norm statistics too). Stage 2 unfreezes the
    top ``unfreeze_blocks`` convolution blocks (a block ends at a pooling layer)
    and the dense layers, for ``epochs`` at ``learning_rate`` cosine-decayed to 2 %.
    """

    head_epochs: int = 12
    head_learning_rate: float = 3e-3
    unfreeze_blocks: int = 1
    epochs: int = 20
    learning_rate: float = 3e-4


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one ensemble (all recorded in the manifest)."""

    architecture: str = "compact"
    members: int = 3
    subset_fraction: float = 0.67
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 5
    early_stopping: bool = True
    seed: int = 0
    steps_per_epoch: int | None = None  # cap, for tiny test runs
    augment: bool = True
    mc_rate: float = 0.0  # MC dropout on the head's features; 0 = none
    mc_samples: int = 1
    class_weighting: bool = True  # classification: inverse-frequency weights (capped)
    positive_weighting: bool = True  # multilabel: lift rare labels' positive term
    fine_tune: FineTune | None = None  # set when starting from a pretrained body


@dataclass(frozen=True)
class Weighting:
    """How the training set's imbalance is handled (recorded in metrics and manifest)."""

    class_weights: np.ndarray | None = None
    positive_weights: np.ndarray | None = None

    def describe(self, task: TaskDefinition) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.class_weights is not None:
            out["class_weights"] = {lab: round(float(w), 4)
                                    for lab, w in zip(task.output_names, self.class_weights)}
            out["class_weighting"] = ("inverse class frequency n/(C n_c) over classes present, "
                                      "capped at 10, rescaled to mean 1 per example")
        if self.positive_weights is not None:
            out["positive_weights"] = {lab: round(float(w), 4)
                                       for lab, w in zip(task.output_names, self.positive_weights)}
            out["positive_weighting"] = ("sqrt(n_neg/n_pos) on the positive term for labels "
                                         "positive in < 25 % of examples, capped at 4")
        return out


def weighting_for(task: TaskDefinition, y: np.ndarray, config: FitConfig) -> Weighting:
    """The imbalance weights for a training set under ``config``."""
    if task.kind == "classification" and config.class_weighting:
        return Weighting(class_weights=class_weights(y, len(task.output_names)))
    if task.kind == "multilabel" and config.positive_weighting:
        return Weighting(positive_weights=positive_weights(y))
    return Weighting()


@dataclass
class FittedMember:
    """A trained member's models and provenance."""

    name: str
    models: MemberModels
    architecture: str
    subset_fraction: float
    subset_seed: int
    params: int
    epochs_run: int
    best_epoch: int
    val_loss: float
    train_seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        """The export model (what goes to ONNX)."""
        return self.models.export


def _batches(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, batch_size: int, seed: int,
             augment: bool) -> Any:
    import keras

    class WeightedBatches(keras.utils.PyDataset):
        """Shuffled ``(x, y, weight)`` batches, each image randomly flipped/rotated by 90°."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(y))

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rows = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            xb = x[rows]
            if augment:
                xb = dihedral(xb, np.random.default_rng([seed, self.epoch, index]))
            return xb, y[rows], w[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(y))

    return WeightedBatches()


def unfreeze_top_blocks(body: Any, blocks: int) -> list[str]:
    """Make the top ``blocks`` convolution blocks and everything above them trainable.

    The body's layers are split into segments at its pooling layers; a block is a
    segment holding a convolution. Layers from the ``blocks``-th last block on (the
    dense layers and any other branch after the last pooling included) train; the
    rest stay frozen. ``blocks = 0`` unfreezes only what follows the last pooling.
    Returns the names of the trainable layers that hold weights.
    """
    from keras import layers

    body.trainable = True
    inner = list(body.layers)
    cuts = [i for i, layer in enumerate(inner)
            if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D))]
    bounds = list(zip([0] + [c + 1 for c in cuts], cuts + [len(inner)]))
    conv_starts = [lo for lo, hi in bounds
                   if any(isinstance(layer, layers.Conv2D) for layer in inner[lo:hi])]
    tail = cuts[-1] + 1 if cuts else 0
    start = conv_starts[-blocks] if 0 < blocks <= len(conv_starts) else (
        0 if blocks > 0 else tail)
    for i, layer in enumerate(inner):
        layer.trainable = i >= start
    return [layer.name for layer in inner[start:] if layer.weights]


def _compile(model: Any, loss: Any, learning_rate: float, decay_steps: int,
             weight_decay: float) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, decay_steps), alpha=0.02)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
                  loss=loss)


def _fit(model: Any, batches: Any, val: tuple[np.ndarray, np.ndarray] | None, *,
         epochs: int, steps: int | None, patience: int, early_stopping: bool) -> dict[str, list]:
    import keras

    callbacks: list[Any] = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log.info(
        "  epoch %d: %s", epoch + 1,
        ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "loss" in k)))]
    if early_stopping and val is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True))
    history = model.fit(batches, validation_data=val, epochs=epochs, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def fit_member(
    task: TaskDefinition,
    x: np.ndarray,
    y: np.ndarray,
    config: FitConfig,
    index: int,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    weighting: Weighting | None = None,
    backbone: Any = None,
) -> FittedMember:
    """Train member ``index`` on its bagging subset of ``(x, y)``.

    Parameters
    ----------
    val
        ``(x, y)`` for early stopping (and the reported validation loss); without
        it the member trains for the full schedule.
    backbone
        A callable returning a fresh pretrained body model (image → features); when
        given, ``config.fine_tune`` decides the two stages.
    """
    import keras

    weighting = weighting or Weighting()
    subset_seed = config.seed * 1000 + index
    rng = np.random.default_rng(subset_seed)
    n_subset = max(1, int(round(config.subset_fraction * len(y))))
    rows = np.sort(rng.choice(len(y), size=n_subset, replace=False))
    keras.utils.set_random_seed(subset_seed)
    body = backbone() if backbone is not None else None
    models = build_member_models(config.architecture, task, input_size=x.shape[1],
                                 channels=x.shape[-1], mc_rate=config.mc_rate,
                                 mc_samples=config.mc_samples, body=body)
    targets = to_targets(task, y[rows])
    weights = sample_weights(task, y[rows], weighting.class_weights)
    loss = loss_for(task, pos_weight=weighting.positive_weights)
    batches = _batches(x[rows], targets, weights, batch_size=config.batch_size,
                       seed=subset_seed, augment=config.augment)
    steps = len(batches) if config.steps_per_epoch is None else min(len(batches),
                                                                     config.steps_per_epoch)
    val_t = (val[0], to_targets(task, val[1])) if val is not None else None
    started = time.perf_counter()
    history: dict[str, list[float]] = {}
    if backbone is not None:
        tune = config.fine_tune or FineTune()
        models.body.trainable = False
        _compile(models.train, loss, tune.head_learning_rate, steps * tune.head_epochs,
                 config.weight_decay)
        stage1 = _fit(models.train, batches, val_t, epochs=tune.head_epochs,
                      steps=steps if config.steps_per_epoch else None, patience=config.patience,
                      early_stopping=config.early_stopping)
        unfrozen = unfreeze_top_blocks(models.body, tune.unfreeze_blocks)
        log.info("member %d: head trained; unfreezing %s", index, ", ".join(unfrozen))
        _compile(models.train, loss, tune.learning_rate, steps * tune.epochs,
                 config.weight_decay)
        stage2 = _fit(models.train, batches, val_t, epochs=tune.epochs,
                      steps=steps if config.steps_per_epoch else None, patience=config.patience,
                      early_stopping=config.early_stopping)
        history = {k: stage1.get(k, []) + stage2.get(k, []) for k in stage1.keys() | stage2.keys()}
    else:
        _compile(models.train, loss, config.learning_rate, steps * config.epochs,
                 config.weight_decay)
        history = _fit(models.train, batches, val_t, epochs=config.epochs,
                       steps=steps if config.steps_per_epoch else None, patience=config.patience,
                       early_stopping=config.early_stopping)
    seconds = time.perf_counter() - started
    monitored = history.get("val_loss") or history["loss"]
    best = int(np.argmin(monitored)) if config.early_stopping else len(monitored) - 1
    member = FittedMember(
        name=f"{config.architecture}-{index}",
        models=models,
        architecture=config.architecture,
        subset_fraction=n_subset / len(y),
        subset_seed=subset_seed,
        params=int(models.export.count_params()),
        epochs_run=len(history["loss"]),
        best_epoch=best + 1,
        val_loss=float(monitored[best]),
        train_seconds=seconds,
        history=history,
    )
    log.info("member %s: %d epochs (best %d), loss %.4f, %.0f s", member.name,
             member.epochs_run, member.best_epoch, member.val_loss, seconds)
    return member


def fit_members(
    task: TaskDefinition,
    x: np.ndarray,
    y: np.ndarray,
    config: FitConfig,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    backbone: Any = None,
) -> tuple[list[FittedMember], Weighting]:
    """Train ``config.members`` members, each on its own random subset of ``(x, y)``."""
    if config.members < 1:
        raise ValueError("An ensemble needs at least one member.")
    weighting = weighting_for(task, y, config)
    members = [fit_member(task, x, y, config, i, val=val, weighting=weighting, backbone=backbone)
               for i in range(config.members)]
    return members, weighting
