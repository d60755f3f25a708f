"""Celery task names and payloads, so the API and the worker agree by construction.

The API enqueues by *name* with ``send_task``; it never imports worker code.
"""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["PREDICT_TASK", "PredictMessage"]

PREDICT_TASK = "skyserve.predict"


class PredictMessage(BaseModel):
    """Arguments of :data:`PREDICT_TASK`: everything else is in the job record."""

    job_id: str
