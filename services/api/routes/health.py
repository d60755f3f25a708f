"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Response, status

from services.api.auth import AnyCaller
from services.api.deps import RegistryDep, SettingsDep, StoreDep
from services.api.problems import problem_responses
from services.api.schemas import Readiness, ReadyCheck

__all__ = ["router"]

router = APIRouter(tags=["health"])

#: Seconds a client or load balancer should wait before asking /readyz again.
RETRY_AFTER_SECONDS = 5


@router.get(
    "/healthz",
    operation_id="healthz",
    summary="The API process is alive (and whether it reaches Redis)",
    description="Always 200 while the process runs: restarting the API would not bring "
    "Redis back, so a liveness probe must not fail on it. `redis` says whether Redis "
    "answered within a second; `/readyz` is the check that gates traffic.",
)
async def healthz(store: StoreDep) -> dict[str, str]:
    reachable = "unreachable"
    with anyio.move_on_after(1.0):
        try:
            await anyio.to_thread.run_sync(store.redis.ping, abandon_on_cancel=True)
            reachable = "reachable"
        except redis.RedisError:
            pass
    return {"status": "ok", "redis": reachable}


@router.get(
    "/readyz",
    response_model=Readiness,
    operation_id="readyz",
    summary="Redis reachable, a live worker with its models loaded, every published task served",
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
    # A worker counts once it has loaded its models (its heartbeat says so); until then
    # a job sent to it would wait for the loading.
    loaded = [w for w in live if w.get("ready", True)]
    loading = len(live) - len(loaded)
    detail = f"{len(loaded)} live worker(s) with models loaded" if loaded else "no live worker"
    if loading:
        detail += f", {loading} still loading models"
    checks["workers"] = ReadyCheck(ok=bool(loaded), detail=detail)
    checks["models"] = _models_check(registry.tasks(), loaded)
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Readiness(
        ready=ready, checks=checks, live_workers=len(loaded), workers=live if caller.admin else []
    )


def _models_check(tasks: list[str], workers: list[dict[str, Any]]) -> ReadyCheck:
    """Published tasks and, once workers report, the version each serves and the
    versions they refused (a broken publish is visible here while the previous one serves).

    Not ok when nothing is published, or when workers report and a published task is
    served by none of them (its jobs would fail).
    """
    if not tasks:
        return ReadyCheck(ok=False, detail="no model published")
    if not workers:
        return ReadyCheck(ok=True, detail=f"published: {', '.join(tasks)}")
    served: dict[str, set[int]] = {}
    refused: dict[str, dict[str, str]] = {}
    for worker in workers:
        for task, version in (worker.get("served") or {}).items():
            served.setdefault(task, set()).add(int(version))
        for task, versions in (worker.get("refused") or {}).items():
            refused.setdefault(task, {}).update(versions)
    parts = []
    for task in tasks:
        text = (
            f"{task} v{', v'.join(map(str, sorted(served[task])))}"
            if task in served
            else f"{task} not served"
        )
        if refused.get(task):
            why = "; ".join(f"v{v}: {reason}" for v, reason in sorted(refused[task].items()))
            text += f" (refused {why})"
        parts.append(text)
    return ReadyCheck(ok=all(t in served for t in tasks), detail="; ".join(parts))
