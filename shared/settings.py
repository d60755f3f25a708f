"""Settings every service shares, read from ``SKYSERVE_*`` environment variables.

Each service subclasses :class:`SkyserveSettings` with its own fields and exposes a
cached ``get_settings()``; nothing builds settings at import time, so tests can make
an app or a worker with other settings.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    # --- Cutouts and remote images (shared/cutouts.py) -------------------------------
    cutout_provider: Literal["sdss", "legacy", "http", "local", "none"] = Field(
        default="sdss",
        description="Where catalog/coordinate jobs get pixels: the SDSS SkyServer or Legacy "
        "Survey preset, 'http' with SKYSERVE_CUTOUT_URL_TEMPLATE, a 'local' archive folder, "
        "or 'none' (such jobs are refused).",
    )
    cutout_url_template: str | None = Field(
        default=None,
        description="Cutout URL with {ra} {dec} {scale} {size} {fov} {fov_deg} {fov_arcsec} "
        "{name} placeholders; overrides the preset's URL.",
    )
    cutout_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["skyserver.sdss.org", "www.legacysurvey.org"],
        description="Hosts the service may fetch images from (cutouts, redirects, user image "
        "URLs): comma-separated or a JSON list; 'host:port' pins a port, '*.domain' allows "
        "subdomains.",
    )
    cutout_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Connect/read timeout of each cutout request."
    )
    cutout_allow_private_addresses: bool = Field(
        default=False,
        description="Let outbound fetches reach private, loopback and link-local addresses "
        "(a host on the allowlist may still resolve to one). Off in deployments: it closes "
        "server-side request forgery through DNS; tests turn it on for their local servers.",
    )
    cutout_retries: int = Field(
        default=2, ge=0, description="Extra attempts after a timeout, connection error or 5xx."
    )
    cutout_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles on each further attempt."
    )
    cutout_pixels: int = Field(
        default=256, gt=0, le=2048, description="Side of the requested cutout, in pixels."
    )
    cutout_max_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest cutout or remote image accepted."
    )
    cutout_cache_dir: Path | None = Field(
        default=None, description="On-disk cache of fetched cutouts (files named by URL sha256)."
    )
    cutout_archive_dir: Path | None = Field(
        default=None,
        description="Folder of PNG/JPEG/FITS cutouts (by object name, or index.csv with "
        "file,ra,dec) for cutout_provider=local.",
    )

    @field_validator("cutout_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> SkyserveSettings:
    """Return the process-wide settings, read once from the environment."""
    return SkyserveSettings()
