"""Random hyper-parameter search with keras-tuner, as the Galaxy Zoo CNN notebook did.

``RandomSearch`` over the base number of filters, the dense width and a log-uniform
learning rate, each trial early-stopped on the validation loss. The winning
architecture is registered under ``tuned-<task>`` so the ensemble trains with it,
and the search space, trials and winner go into the manifest.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.fit import FitConfig, weighting_for
from services.trainer.model.bodies import ARCHITECTURES, Architecture
from services.trainer.model.heads import build_member_models, loss_for, sample_weights, to_targets
from shared.taskdefs import TaskDefinition

__all__ = ["SEARCH_SPACE", "TuneResult", "layer_string", "random_search"]

log = logging.getLogger(__name__)

SEARCH_SPACE: dict[str, Any] = {
    "filters": [8, 16, 24, 32],
    "dense_units": [32, 64, 128, 256],
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
}


@dataclass(frozen=True)
class TuneResult:
    """The winning hyper-parameters, their architecture and every trial's score."""

    architecture: Architecture
    learning_rate: float
    hyperparameters: dict[str, Any]
    trials: list[dict[str, Any]]

    def describe(self) -> dict[str, Any]:
        return {"search": "keras-tuner RandomSearch", "space": SEARCH_SPACE,
                "best": self.hyperparameters, "layers": self.architecture.layers,
                "trials": self.trials}


def layer_string(size: int, filters: int, units: int) -> str:
    """A VGG-style body for ``size`` px: conv-BN-pool blocks, filters doubling, two dense layers.

    Blocks are added while the map stays at least 4 px after the block ('valid'
    3×3 convolution then 2×2 pooling).
    """
    tokens, side, width = [], size, filters
    while (side - 2) // 2 >= 4 and len(tokens) < 16:
        tokens += [f"C{width}", "BN", "MP2"]
        side = (side - 2) // 2
        width = min(width * 2, 256)
    tokens += [f"D{units}", f"D{max(8, units // 4)}"]
    return "-".join(tokens)


def random_search(task: TaskDefinition, x: np.ndarray, y: np.ndarray, val_x: np.ndarray,
                  val_y: np.ndarray, config: FitConfig, *, trials: int, epochs: int = 8,
                  seed: int = 0, directory: Path | None = None) -> TuneResult:
    """Run ``trials`` random trials; return the best architecture and learning rate.

    Raises
    ------
    ImportError
        If keras-tuner is not installed (it is in the ``trainer`` extra).
    """
    import keras
    import keras_tuner as kt

    size, channels = int(x.shape[1]), int(x.shape[-1])
    weighting = weighting_for(task, y, config)
    loss = loss_for(task, pos_weight=weighting.positive_weights)

    def build(hp: Any) -> Any:
        filters = hp.Choice("filters", SEARCH_SPACE["filters"])
        units = hp.Choice("dense_units", SEARCH_SPACE["dense_units"])
        lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        arch = Architecture(f"trial-{filters}-{units}", layer_string(size, filters, units), size,
                            dropout=0.15, dropout_after_pool=False)
        models = build_member_models(arch, task, input_size=size, channels=channels,
                                     mc_rate=config.mc_rate, mc_samples=config.mc_samples)
        models.train.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=config.weight_decay),
                             loss=loss)
        return models.train

    class RandomSearch(kt.RandomSearch):
        """keras-tuner's RandomSearch without its TensorBoard hook.

        With the TensorFlow backend it imports tensorboard on every trial just to patch
        TensorBoard callbacks; we pass none, and tensorflow-cpu does not ship it.
        """

        def _configure_tensorboard_dir(self, callbacks: Any, trial: Any,
                                       execution: int = 0) -> None:
            return None

    with tempfile.TemporaryDirectory() as scratch:
        tuner = RandomSearch(build, objective="val_loss", max_trials=trials,
                                seed=seed, directory=str(directory or scratch),
                                project_name=f"tune-{task.name}", overwrite=True)
        tuner.search(x, to_targets(task, y), sample_weight=sample_weights(
            task, y, weighting.class_weights), validation_data=(val_x, to_targets(task, val_y)),
            epochs=epochs, batch_size=config.batch_size, verbose=0,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=2)])
        finished = tuner.oracle.get_best_trials(num_trials=trials)
        best = tuner.get_best_hyperparameters(1)[0].values
    scores = [{"hyperparameters": dict(t.hyperparameters.values),
               "val_loss": float(t.score) if t.score is not None else None} for t in finished]
    if not any(t["val_loss"] is not None for t in scores):
        raise RuntimeError(f"Every one of the {trials} tuning trials failed; see the log above.")
    arch = Architecture(f"tuned-{task.name}",
                        layer_string(size, int(best["filters"]), int(best["dense_units"])), size,
                        dropout=0.15, dropout_after_pool=False,
                        description=f"keras-tuner winner for {task.name}")
    ARCHITECTURES[arch.name] = arch  # this process trains the ensemble with it
    log.info("tuning %s: best %s", task.name, best)
    return TuneResult(arch, float(best["learning_rate"]), dict(best), scores)
