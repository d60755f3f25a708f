"""Pretrained bodies for transfer learning, the Zoobot way, without downloading anything.

The project's own backbones: a recipe with ``save_backbone = true`` (morphology,
rejection) saves its first member's body — every layer up
to the features the head reads — as ``<cache>/<task>.weights.h5`` with a JSON card
beside it (architecture, input size, the version and command that made it). When a
fine-tuning run asks for a backbone that is not in the cache, it is rebuilt by the
recorded recipe (:func:`ensure_backbone`), so a clean checkout reproduces it.

ImageNet MobileNet v1 (the nebula classifier's base) only from a local weights file
given explicitly (``--imagenet-weights FILE``); Keras is never allowed to fetch it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CACHE", "backbone_path", "load_backbone", "mobilenet_backbone",
           "ensure_backbone"]

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".cache/backbones")


def backbone_path(cache_dir: Path, task: str) -> Path:
    """Where the body weights pretrained on ``task`` live."""
    return Path(cache_dir) / f"{task}.weights.h5"


def _card_path(path: Path) -> Path:
    return Path(str(path).removesuffix(".weights.h5") + ".json")


def load_backbone(path: Path) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A factory of fresh bodies with the saved weights, and the backbone's card.

    Raises
    ------
    FileNotFoundError
        If the weights or their card are missing.
    """
    path = Path(path)
    card_file = _card_path(path)
    if not path.is_file() or not card_file.is_file():
        raise FileNotFoundError(f"No backbone at {path} (weights and {card_file.name} needed).")
    card = json.loads(card_file.read_text())

    def factory() -> Any:
        import keras

        from services.trainer.model.bodies import build_body, get_architecture

        arch = get_architecture(card["architecture"])
        size, channels = int(card["input_size"]), int(card["channels"])
        image = keras.Input((size, size, channels), name="image")
        features = build_body(image, arch, final_dropout=bool(card["final_dropout"]))
        body = keras.Model(image, features, name=f"body_{arch.name}")
        body.load_weights(str(path))
        return body

    return factory, {**card, "weights": str(path)}


def mobilenet_backbone(weights_file: Path, *, input_size: int,
                       alpha: float = 1.0) -> tuple[Callable[[], Any], dict[str, Any]]:
    """MobileNet v1 (ImageNet) from a local ``.h5`` file, global-average pooled.

    Inputs must be scaled to [-1, 1] (``InputSpec(scaling="symmetric")``), as
    MobileNet's ``(x - 128) / 128`` preprocessing.

    Raises
    ------
    FileNotFoundError
        If ``weights_file`` does not exist (nothing is downloaded instead).
    """
    weights_file = Path(weights_file)
    if not weights_file.is_file():
        raise FileNotFoundError(f"ImageNet weights {weights_file} not found; skyserve never "
                                "downloads weights. Give a local MobileNet .h5 file.")

    def factory() -> Any:
        import keras

        return keras.applications.MobileNet(
            input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False,
            weights=str(weights_file), pooling="avg")

    return factory, {"architecture": "mobilenet", "weights": str(weights_file),
                     "input_size": input_size, "scaling": "symmetric", "alpha": alpha,
                     "source": "ImageNet (local file)"}


def ensure_backbone(task: str, cache_dir: Path, *, rebuild: Callable[[Path], None],
                    say: Callable[[str], None] = log.info) -> Path:
    """The cached backbone of ``task``, rebuilt by ``rebuild(path)`` when absent.

    ``rebuild`` trains the task's default recipe and saves member 0's body at
    ``path`` (see ``services.trainer.release.rebuild_backbone``).
    """
    path = backbone_path(cache_dir, task)
    if not path.is_file() or not _card_path(path).is_file():
        say(f"backbone {path} not found: rebuilding it from the {task} recipe")
        rebuild(path)
    return path
