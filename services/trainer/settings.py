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
    ``SKYSERVE_TRAINER_BACKBONE_DIR``, ``SKYSERVE_TRAINER_RUNS_DIR``.
    """

    trainer_threads: int = Field(
        default=2, ge=1, description="TensorFlow and ONNX Runtime threads (machines are shared)."
    )
    trainer_render_workers: int = Field(
        default=2, ge=1,
        description="Processes building data sets (rendering, decoding) in parallel.",
    )
    trainer_backbone_dir: Path = Field(
        default=Path(".cache/backbones"),
        description="Pretrained bodies for transfer learning (<task>.weights.h5 + card).",
    )
    trainer_runs_dir: Path = Field(
        default=Path(".cache/runs"),
        description="Run folders: trained Keras members kept until their version is "
        "published (skyserve-train TASK --resume RUN_DIR finishes a failed run).",
    )


@lru_cache
def get_settings() -> TrainerSettings:
    """Return the trainer's settings, read once from the environment."""
    return TrainerSettings()
