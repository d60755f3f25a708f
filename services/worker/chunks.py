"""Answering one chunk of a batch: rows fetched concurrently, one inference per task.

Each row's pixels come from what its columns name — ``image_url``/``url`` (fetched
under the host allowlist), ``file`` (an image uploaded in the batch's zip), or a
target (``pgc``, ``name``/``target``, ``ra`` + ``dec``: resolved offline, then a
cutout). A small thread pool fetches and preprocesses the rows (the work is I/O
bound); then every task's ensemble runs once over all the chunk's good images. A
row that cannot be used fails alone with its reason; the others run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from services.worker.answers import Prepared, answer, load_models, prepare
from services.worker.runtime import WorkerRuntime
from services.worker.sessions import LoadedModel
from shared.errors import InvalidRequest, SkyserveError
from shared.resolver import Resolver, get_resolver
from shared.schemas import Batch, BatchRow, BatchRowResult, Problem, TaskResult
from shared.targets import resolve_target, row_locator, target_fields

__all__ = ["answer_rows", "count_attempt", "failed_rows"]

logger = logging.getLogger(__name__)

# Redis errors are the chunk's problem (it is retried whole), never one row's.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def _problem(error: SkyserveError) -> Problem:
    return Problem.model_validate(error.to_problem())


def failed_rows(rows: list[BatchRow], error: SkyserveError) -> list[BatchRowResult]:
    """Every row of a chunk failed with the same reason (a chunk-wide failure)."""
    problem = _problem(error)
    return [
        BatchRowResult(
            row=row.row,
            id=row.id,
            input=row.input,
            status="failed",
            error=row.error or problem,
        )
        for row in rows
    ]


def count_attempt(runtime: WorkerRuntime, batch_id: str, index: int) -> int:
    """Count one more start of a chunk; returns how many there have been."""
    key = runtime.batches.key(batch_id, "attempts", index)
    with runtime.batches.redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, runtime.batches.ttl)
        attempts, _ = pipe.execute()
    return int(attempts)


@dataclass
class _Fetched:
    """What the fetch step made of one row: a prepared image, or why not."""

    prepared: Prepared | None = None
    resolved: dict[str, Any] | None = None
    error: Problem | None = None


def _fetch(
    runtime: WorkerRuntime,
    batch_id: str,
    row: BatchRow,
    models: Mapping[str, LoadedModel],
    resolver: Resolver,
) -> _Fetched:
    """Get one row's bytes and preprocess them; a row's failure is returned, not raised."""
    resolved: dict[str, Any] | None = None
    data: bytes | np.ndarray
    try:
        fields = target_fields(row.input)  # column names without case (RA, Name, FILE)
        kind = row_locator(fields)
        if kind == "url":
            data = runtime.images.image_url(fields.get("image_url") or fields["url"])
        elif kind == "file":
            name = fields["file"]
            found = runtime.batches.file(batch_id, name)
            if found is None:
                raise InvalidRequest(f"The batch's zip holds no image named {name!r}.")
            data = found
        elif kind is not None:  # a catalog id, a name or a position
            target = resolve_target(row.input, resolver)
            resolved = target.resolved
            data = runtime.images.cutout(target)  # decoded pixels: no PNG round trip
        else:
            raise InvalidRequest(
                "The row names no target: fill image_url, file, pgc, name, or ra and dec."
            )
        prepared = prepare(data, models, max_pixels=runtime.settings.max_image_pixels)
        return _Fetched(prepared=prepared, resolved=resolved)
    except SkyserveError as err:
        return _Fetched(resolved=resolved, error=_problem(err))
    except _TRANSIENT:
        raise
    except Exception as exc:  # one row's bug must not sink its chunk: logged, row failed
        logger.exception("Batch %s row %d hit an unexpected error.", batch_id, row.row)
        error = SkyserveError(
            f"The worker hit an internal problem ({type(exc).__name__}) with this row. "
            "It has been logged; submitting the row again may help."
        )
        return _Fetched(resolved=resolved, error=_problem(error))


def answer_rows(runtime: WorkerRuntime, batch: Batch, rows: list[BatchRow]) -> list[BatchRowResult]:
    """Answer every row of one chunk.

    Rows the API already found malformed (``row.error``) fail as they are. The others
    are fetched and preprocessed by ``settings.fetch_threads`` threads; each task's
    ensemble then runs once over all the good images.

    Returns
    -------
    list of BatchRowResult
        One per row, in the rows' order: input columns kept, the resolved object for
        targets, per-task answers or the row's problem.

    Raises
    ------
    SkyserveError
        For the whole chunk: a task not served, a pinned version missing or broken.
    redis.ConnectionError, redis.TimeoutError
        Redis went away (the caller retries the chunk).
    """
    settings = runtime.settings
    models = load_models(runtime, batch.tasks, batch.versions)
    fetched: dict[int, _Fetched] = {}
    todo = [row for row in rows if row.error is None]
    if todo:
        # One resolver for the pool: get_resolver() is not locked, and each instance would
        # build its own indexes on first use.
        resolver = get_resolver()
        threads = min(settings.fetch_threads, len(todo))
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"fetch-{batch.id[:8]}")
        try:
            futures = [
                (row, pool.submit(_fetch, runtime, batch.id, row, models, resolver)) for row in todo
            ]
            for row, future in futures:
                fetched[row.row] = future.result()
        finally:
            # On a time limit or a Redis error, drop the queued fetches; running ones end
            # by their own timeouts.
            pool.shutdown(wait=False, cancel_futures=True)

    good = [row for row in todo if fetched[row.row].prepared is not None]
    answers: dict[int, dict[str, TaskResult]] = {}
    if good:
        images = [fetched[row.row].prepared for row in good]
        results = answer(
            runtime.sessions.task_definitions,
            models,
            [image for image in images if image is not None],
            max_batch_size=settings.max_batch_size,
        )
        answers = {row.row: result for row, result in zip(good, results, strict=True)}

    out: list[BatchRowResult] = []
    for row in rows:
        item = fetched.get(row.row)
        error = row.error or (item.error if item else None)
        out.append(
            BatchRowResult(
                row=row.row,
                id=row.id,
                input=row.input,
                status="succeeded" if row.row in answers else "failed",
                error=None if row.row in answers else error,
                resolved=item.resolved if item else None,
                result=answers.get(row.row),
            )
        )
    return out
