"""Settings every service shares, read from ``SKYSERVE_*`` environment variables.

Each service subclasses :class:`SkyserveSettings` with its own fields and exposes a
cached ``get_settings()``; nothing builds settings at import time, so tests can make
an app or a worker with other settings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["REPO_ROOT", "SkyserveSettings", "get_settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class SkyserveSettings(BaseSettings):
    """Configuration common to the API, the worker and the trainer.

    Every field is read from ``SKYSERVE_<FIELD>``; ``redis_url`` also honours the
    conventional ``REDIS_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="SKYSERVE_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("SKYSERVE_REDIS_URL", "REDIS_URL"),
        description="Redis used as Celery broker, job store and payload store.",
    )
    key_prefix: str = Field(
        default="skyserve",
        pattern=r"^[a-z0-9-]+$",
        description="Prefix of every Redis key, so several deployments or tests share one Redis.",
    )
    models_dir: Path = Field(
        default=REPO_ROOT / "models",
        description="Root of the model registry: <models_dir>/<task>/<version>/manifest.json.",
    )
    job_ttl_seconds: int = Field(
        default=7 * 24 * 3600, gt=0, description="How long job records and results are kept."
    )
    max_upload_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest accepted upload, in bytes."
    )
    max_image_pixels: int = Field(
        default=50_000_000,
        gt=0,
        description="Largest accepted image (width x height); guards against decompression bombs.",
    )
    celery_queue: str = Field(default="skyserve", description="Celery queue the jobs go to.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'json': one JSON object per log line with request/job ids (for log "
        "shippers); 'text': plain lines for people.",
    )
    log_level: str = Field(default="INFO", description="Level of skyserve's own loggers.")
    visibility_timeout_seconds: int = Field(
        default=600,
        gt=0,
        description="Redis broker visibility timeout: a message a dead worker had received "
        "is redelivered after this long. Running work is recovered sooner by its lease "
        "(worker lease_seconds); this is the backstop for a message received but not yet "
        "started. It exceeds the longest job, so a running job is not redelivered.",
    )


@lru_cache
def get_settings() -> SkyserveSettings:
    """Return the process-wide settings, read once from the environment."""
    return SkyserveSettings()
