"""Trains a bagged ensemble: each member on its own random 67 % subset, early-stopped.

IncliNET trained every architecture on several random 67 % subsets ("flavors") and
served them together; we do the same, recording each member's subset fraction and
seed. Training batches get random flips and 90° rotations on top of the render-time
augmentations. Regression targets are the task range mapped onto (-1, 1), matching
the tanh head and ``OutputSpec(activation="tanh_range")``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.trainer.dataset import Dataset, dihedral
from shared.taskdefs import TaskDefinition

__all__ = [
    "TrainConfig",
    "TrainedMember",
    "configure_tensorflow",
    "to_target",
    "from_target",
    "train_member",
    "train_ensemble",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one ensemble training run (all recorded in the manifest)."""

    architecture: str = "compact"
    input_size: int | None = None
    members: int = 3
    subset_fraction: float = 0.67
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    steps_per_epoch: int | None = None  # cap, for tiny test runs
    augment: bool = True


@dataclass
class TrainedMember:
    """A trained Keras member and its provenance."""

    name: str
    model: Any  # keras.Model; typed loosely so this module imports without TensorFlow
    architecture: str
    subset_fraction: float
    subset_seed: int
    params: int
    epochs_run: int
    best_epoch: int
    val_rms_deg: float
    train_seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


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


def to_target(degrees: np.ndarray, task: TaskDefinition) -> np.ndarray:
    """Task-range values → (-1, 1), the tanh head's scale."""
    assert task.range is not None
    lo, hi = task.range
    return ((np.asarray(degrees, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def from_target(raw: np.ndarray, task: TaskDefinition) -> np.ndarray:
    """(-1, 1) → task range; the same map as ``shared.ensemble.activate`` for tanh_range."""
    assert task.range is not None
    lo, hi = task.range
    return lo + (hi - lo) * (np.asarray(raw, dtype=np.float64) + 1.0) / 2.0


def _batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int, augment: bool) -> Any:
    import keras

    class AugmentedBatches(keras.utils.PyDataset):
        """Shuffled batches, each image randomly flipped/rotated by 90°; seeded per epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(y))

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            xb = x[rows]
            if augment:
                xb = dihedral(xb, np.random.default_rng([seed, self.epoch, index]))
            return xb, y[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(y))

    return AugmentedBatches()


def train_member(
    train: Dataset,
    val: Dataset,
    task: TaskDefinition,
    config: TrainConfig,
    index: int,
) -> TrainedMember:
    """Train ensemble member ``index`` on its bagging subset of ``train``.

    Early stopping watches the validation loss and restores the best weights.
    """
    import keras

    from services.trainer.architectures import build_model

    subset_seed = config.seed * 1000 + index
    rng = np.random.default_rng(subset_seed)
    n_subset = max(1, int(round(config.subset_fraction * len(train))))
    rows = np.sort(rng.choice(len(train), size=n_subset, replace=False))
    keras.utils.set_random_seed(subset_seed)
    model = build_model(config.architecture, task, input_size=train.x.shape[1],
                        channels=train.x.shape[-1])
    batches = _batches(train.x[rows], to_target(train.y[rows], task),
                       batch_size=config.batch_size, seed=subset_seed, augment=config.augment)
    steps = len(batches) if config.steps_per_epoch is None else min(len(batches),
                                                                     config.steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, steps * config.epochs), alpha=0.02
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss="mse",
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    started = time.perf_counter()
    history = model.fit(
        batches,
        validation_data=(val.x, to_target(val.y, task)),
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=[stop],
        verbose=0,
    )
    seconds = time.perf_counter() - started
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert task.range is not None
    half_range = (task.range[1] - task.range[0]) / 2.0
    member = TrainedMember(
        name=f"{config.architecture}-{index}",
        model=model,
        architecture=config.architecture,
        subset_fraction=n_subset / len(train),
        subset_seed=subset_seed,
        params=int(model.count_params()),
        epochs_run=len(val_loss),
        best_epoch=best + 1,
        val_rms_deg=float(math.sqrt(val_loss[best]) * half_range),
        train_seconds=seconds,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
    )
    log.info("member %s: %d epochs (best %d), val RMS %.2f deg, %.0f s", member.name,
             member.epochs_run, member.best_epoch, member.val_rms_deg, seconds)
    return member


def train_ensemble(
    train: Dataset, val: Dataset, task: TaskDefinition, config: TrainConfig
) -> list[TrainedMember]:
    """Train ``config.members`` members, each on its own random subset of ``train``."""
    if config.members < 1:
        raise ValueError("An ensemble needs at least one member.")
    return [train_member(train, val, task, config, i) for i in range(config.members)]
