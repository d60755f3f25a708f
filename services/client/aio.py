"""The asynchronous Python client of the skyserve HTTP API, ``AsyncSkyserveClient``.

The same operations, arguments and errors as ``services.client.http.SkyserveClient``,
as coroutines; ``iter_batch_progress`` is an async iterator.

>>> async with AsyncSkyserveClient() as sky:
...     job = await sky.submit_image("galaxy.png", tasks=["inclination"])
...     job = await sky.wait_job(job.id, timeout=60)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from services.client.calls import (
    TRANSIENT_STATUSES,
    BatchSource,
    Call,
    Deadline,
    ImageSource,
    ResultFormat,
    as_dataframe,
    batch_call,
    batch_finished,
    batch_path,
    connection_error,
    http_options,
    image_call,
    job_path,
    raise_for_problem,
    read_batch,
    read_job,
    read_readiness,
    request_args,
    results_destination,
    results_table,
    retry_after,
    target_call,
    timeout_message,
)
from services.client.errors import SkyserveAPIError, SkyserveTimeoutError
from shared.schemas import TERMINAL_STATUSES, Batch, Job

__all__ = ["AsyncSkyserveClient"]


class AsyncSkyserveClient:
    """Asynchronous client of the skyserve API; the same operations as ``SkyserveClient``.

    Parameters are those of ``SkyserveClient``; ``transport`` is an async one. Use it
    as an async context manager, or call ``aclose()``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, options = http_options(url, api_key=api_key, timeout=timeout)
        self._http = httpx.AsyncClient(transport=transport, **options)

    async def __aenter__(self) -> AsyncSkyserveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        """See ``SkyserveClient._send``."""
        with ExitStack() as stack:
            try:
                return await self._http.request(
                    **request_args(call, timeout=self._http.timeout, stack=stack)
                )
            except httpx.TransportError as exc:
                raise connection_error(self.url, exc) from exc

    async def submit_image(
        self,
        image: ImageSource,
        tasks: str | Sequence[str] | None = None,
        *,
        versions: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """See ``SkyserveClient.submit_image``."""
        call = image_call(image, tasks=tasks, versions=versions, idempotency_key=idempotency_key)
        return read_job(await self._send(call))

    async def submit_target(
        self,
        *,
        pgc: int | None = None,
        name: str | None = None,
        ra: float | str | None = None,
        dec: float | str | None = None,
        coordinates: str | None = None,
        fov_arcmin: float | None = None,
        tasks: str | Sequence[str] | None = None,
        versions: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """See ``SkyserveClient.submit_target``."""
        call = target_call(
            pgc=pgc,
            name=name,
            ra=ra,
            dec=dec,
            coordinates=coordinates,
            fov_arcmin=fov_arcmin,
            tasks=tasks,
            versions=versions,
            idempotency_key=idempotency_key,
        )
        return read_job(await self._send(call))

    async def get_job(self, job_id: str, wait: float = 0) -> Job:
        """See ``SkyserveClient.get_job``."""
        params = {"wait": wait} if wait else {}
        return read_job(await self._send(Call("GET", job_path(job_id), params=params, wait=wait)))

    async def wait_job(
        self, job_id: str, timeout: float | None = 600.0, *, poll: float = 1.0
    ) -> Job:
        """See ``SkyserveClient.wait_job``."""
        deadline = Deadline(timeout)
        while True:
            wait = deadline.long_poll()
            try:
                response = await self._send(
                    Call("GET", job_path(job_id), params={"wait": wait}, wait=wait)
                )
                job = read_job(response)
                pause = retry_after(response)
            except SkyserveAPIError as exc:
                if exc.status not in TRANSIENT_STATUSES or deadline.expired():
                    raise
                job, pause = None, exc.retry_after
            if job is not None and job.status in TERMINAL_STATUSES:
                return job
            if deadline.expired():
                raise SkyserveTimeoutError(
                    timeout_message(
                        f"Job {job_id}",
                        status=job.status if job else "unavailable",
                        timeout=timeout,
                    ),
                    job,
                )
            await asyncio.sleep(deadline.pause(pause, poll))

    async def cancel_job(self, job_id: str) -> Job:
        """See ``SkyserveClient.cancel_job``."""
        return read_job(await self._send(Call("DELETE", job_path(job_id))))

    async def submit_batch(
        self,
        source: BatchSource,
        tasks: str | Sequence[str] | None = None,
        *,
        versions: Mapping[str, int] | None = None,
        id_column: str | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """See ``SkyserveClient.submit_batch``."""
        call = batch_call(
            source,
            tasks=tasks,
            versions=versions,
            id_column=id_column,
            idempotency_key=idempotency_key,
        )
        return read_batch(await self._send(call))

    async def get_batch(self, batch_id: str) -> Batch:
        """See ``SkyserveClient.get_batch``."""
        return read_batch(await self._send(Call("GET", batch_path(batch_id))))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """See ``SkyserveClient.cancel_batch``."""
        return read_batch(await self._send(Call("DELETE", batch_path(batch_id))))

    async def iter_batch_progress(
        self, batch_id: str, *, poll: float = 1.0, timeout: float | None = None
    ) -> AsyncIterator[Batch]:
        """See ``SkyserveClient.iter_batch_progress``."""
        deadline = Deadline(timeout)
        while True:
            response = await self._send(Call("GET", batch_path(batch_id)))
            batch = read_batch(response)
            yield batch
            if batch_finished(batch):
                return
            if deadline.expired():
                raise SkyserveTimeoutError(
                    timeout_message(f"Batch {batch_id}", status=batch.status, timeout=timeout),
                    batch,
                )
            await asyncio.sleep(deadline.pause(retry_after(response), poll))

    async def wait_batch(
        self, batch_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> Batch:
        """See ``SkyserveClient.wait_batch``."""
        async for batch in self.iter_batch_progress(batch_id, poll=poll, timeout=timeout):
            if batch_finished(batch):
                return batch
        raise RuntimeError(f"Progress of batch {batch_id} ended before it finished.")

    async def download_batch_results(
        self,
        batch_id: str,
        format: ResultFormat = "csv",
        *,
        dest: str | os.PathLike[str] | None = None,
    ) -> Path:
        """See ``SkyserveClient.download_batch_results``."""
        path, part = results_destination(batch_id, fmt=format, dest=dest)
        path.parent.mkdir(parents=True, exist_ok=True)
        call_path = f"{batch_path(batch_id)}/results"
        try:
            async with self._http.stream("GET", call_path, params={"format": format}) as response:
                if response.is_error:
                    await response.aread()
                    raise_for_problem(response)
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise connection_error(self.url, exc) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)
        return path

    async def results_table(self, batch_id: str) -> Any:
        """See ``SkyserveClient.results_table``."""
        call = Call("GET", f"{batch_path(batch_id)}/results", params={"format": "ecsv"})
        return results_table(raise_for_problem(await self._send(call)).content)

    async def results_dataframe(self, batch_id: str) -> Any:
        """See ``SkyserveClient.results_dataframe``."""
        return as_dataframe(await self.results_table(batch_id))

    async def tasks(self) -> list[dict[str, Any]]:
        """See ``SkyserveClient.tasks``."""
        return raise_for_problem(await self._send(Call("GET", "/v1/tasks"))).json()

    async def models(self) -> list[dict[str, Any]]:
        """See ``SkyserveClient.models``."""
        return raise_for_problem(await self._send(Call("GET", "/v1/models"))).json()

    async def ready(self) -> dict[str, Any]:
        """See ``SkyserveClient.ready``."""
        return read_readiness(await self._send(Call("GET", "/readyz")))
