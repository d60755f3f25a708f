"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import redis
from fastapi import APIRouter, Response, status

from services.api.auth import AnyCaller
from services.api.deps import RegistryDep, SettingsDep, StoreDep
from services.api.problems import problem_responses
from services.api.schemas import Readiness, ReadyCheck

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    operation_id="healthz",
    summary="The API process is alive",
    responses=problem_responses(),
)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    operation_id="readyz",
    summary="Redis reachable, at least one live worker, models published",
    description="Public: ready or not, and which check fails. The `workers` list (host "
    "names, process ids, served versions) is shown in open mode and to admin keys only.",
    responses={
        **problem_responses(401, 403, 429),
        503: {"model": Readiness, "description": "Not ready; the checks say why."},
    },
)
async def readyz(
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    registry: RegistryDep,
    caller: AnyCaller,
) -> Readiness:
    checks: dict[str, ReadyCheck] = {}
    workers: list[dict] = []
    try:
        await anyio.to_thread.run_sync(store.redis.ping)
        checks["redis"] = ReadyCheck(ok=True, detail="reachable")
        workers = await anyio.to_thread.run_sync(store.workers)
    except redis.RedisError as exc:
        checks["redis"] = ReadyCheck(ok=False, detail=f"unreachable: {exc}")
    now = datetime.now(UTC).timestamp()
    live = [w for w in workers if now - float(w.get("time", now)) <= settings.worker_stale_seconds]
    checks["workers"] = ReadyCheck(
        ok=bool(live), detail=f"{len(live)} live worker(s)" if live else "no live worker"
    )
    tasks = registry.tasks()
    checks["models"] = ReadyCheck(
        ok=bool(tasks), detail=f"serving {', '.join(tasks)}" if tasks else "no model published"
    )
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(ready=ready, checks=checks, workers=live if caller.admin else [])
