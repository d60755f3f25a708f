"""API settings: the shared ones plus what only the HTTP gateway needs."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import SkyserveSettings

__all__ = ["ApiSettings", "get_settings"]


class ApiSettings(SkyserveSettings):
    """Configuration of ``services.api`` (``SKYSERVE_*`` environment variables)."""

    host: str = Field(default="127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port uvicorn binds.")
    root_path: str = Field(
        default="", description="Sub-path the API is served under behind a proxy (e.g. /skyserve)."
    )
    max_wait_seconds: float = Field(
        default=30.0, ge=0, description="Longest ?wait= a client may ask GET /v1/jobs/{id} to block."
    )
    poll_interval_seconds: float = Field(
        default=0.05, gt=0, description="How often a waiting GET re-reads the job record."
    )
    batch_chunk_rows: int = Field(
        default=128, gt=0, le=10_000,
        description="Rows per worker task: large enough to batch inference, small enough "
        "for smooth progress and cheap redelivery.",
    )
    max_batch_rows: int = Field(default=1_000_000, gt=0, description="Most rows in one batch.")
    max_batch_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest catalog or zip upload, in bytes."
    )
    max_batch_stored_bytes: int = Field(
        default=1024 * 1024 * 1024, gt=0,
        description="Most bytes one batch's input (rows and zip images) may take in Redis "
        "once unpacked; past it the batch is refused with 413. Bounds Redis memory per "
        "batch (see deploy/README.md on sizing Redis).",
    )
    worker_stale_seconds: float = Field(
        default=30.0, gt=0, description="A worker heartbeat older than this does not count as ready."
    )


@lru_cache
def get_settings() -> ApiSettings:
    """Process-wide API settings, read once from the environment."""
    return ApiSettings()
