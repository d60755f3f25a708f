"""``/metrics``: the API process's Prometheus metrics, for operators only."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.auth import AdminCaller
from services.api.problems import problem_responses

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics (admin keys only when keys are on)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(auth=True),
    },
)
def get_metrics(caller: AdminCaller) -> Response:
    # Request counts and latencies by route and problem code say how the service is
    # used: an operator's business, so admin only (Prometheus sends a bearer token).
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
