"""One fit loop for every task kind: bagged members, from scratch or from a pretrained body.

Each member trains on its own random subset of the training set (IncliNET's
"flavors", 67 % by default) with the head and loss of the task's kind
(:mod:`services.trainer.model.heads`), random flips and 90° rotations per batch, and
optional per-example weights (class weights for classification). From scratch:
AdamW with cosine decay, early stopping on the validation loss (best weights
restored). From a pretrained body (Zoobot-style fine-tuning): first the new head
alone with the body frozen, then the top block(s) of the body unfrozen with a lower,
decaying learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.trainer.model.heads import (
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
           "configure_tensorflow", "dihedral", "batches", "fit_member", "unfreeze_top_blocks"]

log = logging.getLogger(__name__)


class FineTune(BaseModel):
    """Two-stage fine-tuning of a pretrained body (Zoobot's recipe).

    Stage 1 trains the new head for ``head_epochs`` at ``head_learning_rate`` with
    the whole body frozen (its batch-norm statistics too). Stage 2 unfreezes the
    top ``unfreeze_blocks`` convolution blocks (a block ends at a pooling layer)
    and the dense layers, for ``epochs`` at ``learning_rate`` cosine-decayed to 2 %.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    head_epochs: int = Field(default=12, ge=0)
    head_learning_rate: float = Field(default=3e-3, gt=0)
    unfreeze_blocks: int = Field(default=1, ge=0)
    epochs: int = Field(default=20, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)


class FitConfig(BaseModel):
    """Hyper-parameters of one ensemble (the ``[fit]`` table of a recipe)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = "compact"
    members: int = Field(default=3, ge=1)
    subset_fraction: float = Field(default=0.67, gt=0, le=1)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=5, ge=1)
    early_stopping: bool = True  # on the validation loss, when the source has a validation set
    steps_per_epoch: int | None = Field(default=None, ge=1)  # cap, for tiny test runs
    augment: bool = True  # random flips and 90° rotations per batch
    mc_rate: float = Field(default=0.0, ge=0, lt=1)  # MC dropout on the head's features; 0 = none
    mc_samples: int = Field(default=1, ge=1)  # passes per image and transform when serving
    class_weighting: bool = True  # classification: inverse-frequency weights (capped)
    positive_weighting: bool = True  # multilabel: lift rare labels' positive term
    fine_tune: FineTune | None = None  # the stages, when starting from a pretrained body


@dataclass(frozen=True)
class Weighting:
    """How the training set's imbalance is handled (recorded in metrics and manifest)."""

    class_weights: np.ndarray | None = None
    positive_weights: np.ndarray | None = None

    def describe(self, task: TaskDefinition) -> dict[str, Any]:
        """JSON-able weights per label and how they were computed (empty when unweighted)."""
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

    @classmethod
    def from_description(cls, task: TaskDefinition, described: dict[str, Any]) -> Weighting:
        """The inverse of :meth:`describe` (a resumed run reads its weights back)."""
        def array(key: str) -> np.ndarray | None:
            values = described.get(key)
            return None if values is None else np.array(
                [values[lab] for lab in task.output_names], np.float32)

        return cls(class_weights=array("class_weights"),
                   positive_weights=array("positive_weights"))


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

    def provenance(self) -> dict[str, Any]:
        """Everything but the models, JSON-able (kept beside the saved Keras files)."""
        return {"name": self.name, "architecture": self.architecture,
                "subset_fraction": self.subset_fraction, "subset_seed": self.subset_seed,
                "params": self.params, "epochs_run": self.epochs_run,
                "best_epoch": self.best_epoch, "val_loss": self.val_loss,
                "train_seconds": self.train_seconds, "history": self.history}


def configure_tensorflow(threads: int, seed: int) -> None:
    """Cap TensorFlow's thread pools (shared machines) and seed every generator.

    Thread counts can only be set before TensorFlow runs its first op; later calls
    keep whatever was set first.
    """
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        log.debug("TensorFlow already initialised; thread counts unchanged")
    keras.utils.set_random_seed(seed)


def dihedral(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90° rotations per image: exact, label-preserving, aspect-keeping.

    ``batch`` is ``(N, S, S, C)``; these eight symmetries of the square add to the
    render-time rotations without any resampling.
    """
    out = np.empty_like(batch)
    ks = rng.integers(0, 4, size=len(batch))
    flips = rng.random(len(batch)) < 0.5
    for i, (k, flip) in enumerate(zip(ks, flips)):
        image = np.rot90(batch[i], k=int(k), axes=(0, 1))
        out[i] = image[:, ::-1] if flip else image
    return out


def batches(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *, batch_size: int,
            seed: int, augment: bool) -> Any:
    """Shuffled ``(x, y)`` or ``(x, y, weight)`` batches as a Keras ``PyDataset``.

    The order is reshuffled every epoch and each image randomly flipped and rotated by
    90° (:func:`dihedral`), all seeded by ``seed``, the epoch and the batch index.
    """
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(y))

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            rows = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            xb = x[rows]
            if augment:
                xb = dihedral(xb, np.random.default_rng([seed, self.epoch, index]))
            return (xb, y[rows]) if w is None else (xb, y[rows], w[rows])

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(y))

    return Batches()


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


def _stage(model: Any, data: Any, val: tuple[np.ndarray, np.ndarray] | None, *, loss: Any,
           learning_rate: float, epochs: int, steps: int, config: FitConfig) -> dict[str, list]:
    """Compile ``model`` with AdamW on a cosine decay over the stage, and fit it."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, steps * epochs), alpha=0.02)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
                  loss=loss)
    def progress(epoch: int, logs: dict[str, float] | None) -> None:
        log.info("  epoch %d: %s", epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "loss" in k))

    callbacks: list[Any] = [keras.callbacks.LambdaCallback(on_epoch_end=progress)]
    if config.early_stopping and val is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True))
    history = model.fit(data, validation_data=val, epochs=epochs,
                        steps_per_epoch=steps if config.steps_per_epoch else None,
                        callbacks=callbacks, verbose=0)
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def fit_member(
    task: TaskDefinition,
    x: np.ndarray,
    y: np.ndarray,
    config: FitConfig,
    index: int,
    *,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    weighting: Weighting | None = None,
    backbone: Callable[[], Any] | None = None,
) -> FittedMember:
    """Train member ``index`` on its bagging subset of ``(x, y)``.

    Parameters
    ----------
    seed
        The run's seed; the member's subset and weights are seeded by
        ``seed * 1000 + index``.
    val
        ``(x, y)`` for early stopping (and the reported validation loss); without
        it the member trains for the full schedule.
    weighting
        Imbalance weights (:func:`weighting_for` of the whole training set).
    backbone
        Returns a fresh pretrained body model (image → features); when given,
        ``config.fine_tune`` decides the two stages.
    """
    import keras

    weighting = weighting or Weighting()
    subset_seed = seed * 1000 + index
    rng = np.random.default_rng(subset_seed)
    n_subset = max(1, int(round(config.subset_fraction * len(y))))
    rows = np.sort(rng.choice(len(y), size=n_subset, replace=False))
    keras.utils.set_random_seed(subset_seed)
    models = build_member_models(config.architecture, task, input_size=x.shape[1],
                                 channels=x.shape[-1], mc_rate=config.mc_rate,
                                 mc_samples=config.mc_samples,
                                 body=backbone() if backbone is not None else None)
    data = batches(x[rows], to_targets(task, y[rows]),
                   sample_weights(task, y[rows], weighting.class_weights),
                   batch_size=config.batch_size, seed=subset_seed, augment=config.augment)
    steps = len(data) if config.steps_per_epoch is None else min(len(data), config.steps_per_epoch)
    val_t = (val[0], to_targets(task, val[1])) if val is not None else None
    loss = loss_for(task, pos_weight=weighting.positive_weights)
    started = time.perf_counter()
    if backbone is not None:
        tune = config.fine_tune or FineTune()
        models.body.trainable = False
        stage1 = _stage(models.train, data, val_t, loss=loss, epochs=tune.head_epochs,
                        learning_rate=tune.head_learning_rate, steps=steps, config=config)
        unfrozen = unfreeze_top_blocks(models.body, tune.unfreeze_blocks)
        log.info("member %d: head trained; unfreezing %s", index, ", ".join(unfrozen))
        stage2 = _stage(models.train, data, val_t, loss=loss, epochs=tune.epochs,
                        learning_rate=tune.learning_rate, steps=steps, config=config)
        history = {k: stage1.get(k, []) + stage2.get(k, []) for k in stage1.keys() | stage2.keys()}
    else:
        history = _stage(models.train, data, val_t, loss=loss, epochs=config.epochs,
                         learning_rate=config.learning_rate, steps=steps, config=config)
    seconds = time.perf_counter() - started
    monitored = history.get("val_loss") or history["loss"]
    early = config.early_stopping and val is not None
    best = int(np.argmin(monitored)) if early else len(monitored) - 1
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
