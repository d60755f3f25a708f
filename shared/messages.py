"""Celery task names and payloads, so the API and the worker agree by construction.

The API enqueues by *name* with ``send_task``; it never imports worker code.
"""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["PREDICT_CHUNK_TASK", "PREDICT_TASK", "ChunkMessage", "PredictMessage"]

PREDICT_TASK = "skyserve.predict"


class PredictMessage(BaseModel):
    """Arguments of :data:`PREDICT_TASK`: everything else is in the job record."""

    job_id: str

PREDICT_CHUNK_TASK = "skyserve.predict_chunk"


class ChunkMessage(BaseModel):
    """Arguments of :data:`PREDICT_CHUNK_TASK`: one chunk of one batch."""

    batch_id: str
    chunk: int
