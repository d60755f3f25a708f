"""Trainer settings: the shared ``SKYSERVE_*`` base plus how much of the machine to use."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from shared.settings import SkyserveSettings

__all__ = ["TrainerSettings", "get_settings"]


class TrainerSettings(SkyserveSettings):
    """Settings of ``skyserve-train``; ``models_dir`` (the registry) comes from the base.

    Environment: ``SKYSERVE_TRAINER_THREADS``, ``SKYSERVE_TRAINER_RENDER_WORKERS``,
    ``SKYSERVE_TRAINER_BACKBONE_DIR``.
    """

    trainer_threads: int = Field(
        default=2, ge=1, description="TensorFlow and ONNX Runtime threads (machines are shared)."
    )
    trainer_render_workers: int = Field(
        default=2, ge=1, description="Processes rendering synthetic galaxies in parallel."
    )
    trainer_backbone_dir: Path = Field(
        default=Path(".cache/backbones"),
        description="Pretrained bodies for transfer learning (<task>.weights.h5 + card).",
    )


@lru_cache
def get_settings() -> TrainerSettings:
    """Return the trainer's settings, read once from the environment."""
    return TrainerSettings()
