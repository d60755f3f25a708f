"""API settings: the shared ones plus what only the HTTP gateway needs."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

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
        default=0.5, gt=0,
        description="How often a waiting GET re-reads the job record when no notice of the "
        "job's end has woken it (the worker publishes one, which wakes it at once; this "
        "re-read only covers a notice that was missed).",
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

    # --- Security and limits (services/api/auth.py, services/api/limits.py) -----------
    auth_mode: Literal["open", "keys"] = Field(
        default="open",
        description="'keys': every job and batch call needs 'Authorization: Bearer <key>' "
        "(keys made with skyserve-admin); 'open': no keys, for one user on loopback "
        "(make run). The compose deployment sets 'keys'.",
    )
    rate_limit_per_minute: int = Field(
        default=1200, ge=0,
        description="Requests one API key may make per minute (fixed window in Redis); "
        "past it: 429 with Retry-After. 0 = unlimited. Not applied in open mode.",
    )
    max_active_jobs_per_key: int = Field(
        default=100, ge=0,
        description="Unfinished jobs plus batches one key may have; past it: 429 with "
        "Retry-After. 0 = unlimited. Not applied in open mode.",
    )
    max_json_body_bytes: int = Field(
        default=64 * 1024, gt=0,
        description="Largest JSON body of POST /v1/jobs (a target and task names).",
    )
    max_zip_entries: int = Field(
        default=10_000, gt=0, description="Most files in one uploaded zip."
    )
    max_zip_ratio: float = Field(
        default=200.0, gt=1,
        description="Largest expanded/compressed size ratio of a zip entry over 1 MB "
        "(images hardly compress; a bigger ratio is a zip bomb).",
    )
    request_timeout_seconds: float = Field(
        default=300.0, gt=0,
        description="A request that has not started its answer after this long gets 503 "
        "(uploads included; long polls are capped well below it by max_wait_seconds).",
    )


@lru_cache
def get_settings() -> ApiSettings:
    """Process-wide API settings, read once from the environment."""
    return ApiSettings()
