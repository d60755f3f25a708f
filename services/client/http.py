"""The synchronous Python client of the skyserve HTTP API, ``SkyserveClient``.

``AsyncSkyserveClient`` (in ``services.client.aio``, re-exported here) offers the same
operations as coroutines. Single jobs come back as ``shared.schemas.Job``, batches as
``shared.schemas.Batch``; every error status raises ``SkyserveAPIError`` carrying the
problem document, and an unreachable server raises ``SkyserveConnectionError``.

>>> with SkyserveClient() as sky:                       # SKYSERVE_URL, SKYSERVE_API_KEY
...     job = sky.submit_image("galaxy.png", tasks=["inclination"])
...     job = sky.wait_job(job.id, timeout=60)
...     job.result.tasks["inclination"].value
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from services.client.aio import AsyncSkyserveClient
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

__all__ = ["SkyserveClient", "AsyncSkyserveClient", "ResultFormat"]


class SkyserveClient:
    """Synchronous client of the skyserve API.

    Parameters
    ----------
    url
        Base URL of the API; default ``SKYSERVE_URL`` or ``http://127.0.0.1:8000``.
    api_key
        Sent as ``Authorization: Bearer <key>``; default ``SKYSERVE_API_KEY``.
    timeout
        Seconds to connect and to read one response; default ``SKYSERVE_CLIENT_TIMEOUT``
        (30). Long polls add the time they ask the server to hold the request.
    transport
        An ``httpx`` transport (proxies, retries, tests); default: plain HTTP.

    Use it as a context manager, or call ``close()``, to release the connections.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, options = http_options(url, api_key=api_key, timeout=timeout)
        self._http = httpx.Client(transport=transport, **options)

    def __enter__(self) -> SkyserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ----------------------------------------------------------------------
    def _send(self, call: Call) -> httpx.Response:
        """Send ``call``; transport failures become ``SkyserveConnectionError``."""
        with ExitStack() as stack:
            try:
                return self._http.request(
                    **request_args(call, timeout=self._http.timeout, stack=stack)
                )
            except httpx.TransportError as exc:
                raise connection_error(self.url, exc) from exc

    # -- single jobs --------------------------------------------------------------------
    def submit_image(
        self,
        image: ImageSource,
        tasks: str | Sequence[str] | None = None,
        *,
        versions: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Upload one image (a path or its bytes) and queue it.

        Parameters
        ----------
        image
            Path of a PNG/JPEG/GIF/TIFF/WebP/BMP/FITS file, or the file's bytes.
        tasks
            Task names (a list or ``"a,b"``); default: every served task.
        versions
            Model version pins, e.g. ``{"inclination": 1}``.
        idempotency_key
            Makes retries safe: the same key returns the first job instead of a new one.

        Returns
        -------
        Job
            The queued job (or the earlier one for a reused ``idempotency_key``).

        Raises
        ------
        SkyserveAPIError
            The API refused it (unknown task, not an image, too large, ...).
        SkyserveConnectionError, FileNotFoundError
        """
        call = image_call(image, tasks=tasks, versions=versions, idempotency_key=idempotency_key)
        return read_job(self._send(call))

    def submit_target(
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
        """Queue a catalogued object (``pgc=`` or ``name=``) or a sky position (``ra=``,
        ``dec=`` in degrees or sexagesimal strings, or ``coordinates=`` holding both, e.g.
        ``"00h42m44.3s +41d16m09s"``), with an optional ``fov_arcmin=``.

        Raises
        ------
        ValueError
            Unless exactly one kind of target is given.
        SkyserveAPIError
            E.g. 404 for an unknown name (``problem["suggestions"]`` lists close ones).
        SkyserveConnectionError
        """
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
        return read_job(self._send(call))

    def get_job(self, job_id: str, wait: float = 0) -> Job:
        """Read a job; with ``wait`` > 0 the server holds the request up to that many
        seconds (capped by the server) until the job finishes."""
        params = {"wait": wait} if wait else {}
        return read_job(self._send(Call("GET", job_path(job_id), params=params, wait=wait)))

    def wait_job(self, job_id: str, timeout: float | None = 600.0, *, poll: float = 1.0) -> Job:
        """Wait until a job succeeds, fails or is cancelled, and return it.

        Long-polls with ``?wait=``; between requests it sleeps ``poll`` seconds, or
        longer if the server's ``Retry-After`` asks. A ``429``/``503`` while waiting is
        retried the same way. A failed job is returned, not raised: check ``status``.

        Raises
        ------
        SkyserveTimeoutError
            Not finished within ``timeout`` seconds (``None``: wait forever);
            ``.last`` holds the last record read.
        SkyserveAPIError, SkyserveConnectionError
        """
        deadline = Deadline(timeout)
        while True:
            wait = deadline.long_poll()
            try:
                response = self._send(
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
            time.sleep(deadline.pause(pause, poll))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued or running job (``SkyserveAPIError`` 409 once finished)."""
        return read_job(self._send(Call("DELETE", job_path(job_id))))

    # -- batches ------------------------------------------------------------------------
    def submit_batch(
        self,
        source: BatchSource,
        tasks: str | Sequence[str] | None = None,
        *,
        versions: Mapping[str, int] | None = None,
        id_column: str | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Queue a batch: a ``.csv`` catalog, a ``.json`` list of rows, a ``.zip`` of
        images with ``catalog.csv`` inside, or rows in memory (a list of dicts).

        Each row says what to look at by its columns (``pgc``, ``name``, ``ra`` + ``dec``,
        ``image_url`` or ``file``); other columns come back with the results.

        Raises
        ------
        FileNotFoundError, ValueError
            A missing file, or one that is not .csv/.json/.zip.
        SkyserveAPIError, SkyserveConnectionError
        """
        call = batch_call(
            source,
            tasks=tasks,
            versions=versions,
            id_column=id_column,
            idempotency_key=idempotency_key,
        )
        return read_batch(self._send(call))

    def get_batch(self, batch_id: str) -> Batch:
        """A batch's status and progress (``total``, ``done``, ``failed``, ``pending``)."""
        return read_batch(self._send(Call("GET", batch_path(batch_id))))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel a batch: rows not yet run are not run."""
        return read_batch(self._send(Call("DELETE", batch_path(batch_id))))

    def iter_batch_progress(
        self, batch_id: str, *, poll: float = 1.0, timeout: float | None = None
    ) -> Iterator[Batch]:
        """Yield the batch record every ``poll`` seconds (longer if the server's
        ``Retry-After`` asks) until it finishes; the last record yielded is the finished one.

        Raises
        ------
        SkyserveTimeoutError
            Still running after ``timeout`` seconds.
        """
        deadline = Deadline(timeout)
        while True:
            response = self._send(Call("GET", batch_path(batch_id)))
            batch = read_batch(response)
            yield batch
            if batch_finished(batch):
                return
            if deadline.expired():
                raise SkyserveTimeoutError(
                    timeout_message(f"Batch {batch_id}", status=batch.status, timeout=timeout),
                    batch,
                )
            time.sleep(deadline.pause(retry_after(response), poll))

    def wait_batch(
        self, batch_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> Batch:
        """Wait until a batch finishes and return its record (see ``iter_batch_progress``)."""
        for batch in self.iter_batch_progress(batch_id, poll=poll, timeout=timeout):
            if batch_finished(batch):
                return batch
        raise RuntimeError(f"Progress of batch {batch_id} ended before it finished.")

    def download_batch_results(
        self,
        batch_id: str,
        format: ResultFormat = "csv",
        *,
        dest: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Stream a batch's results to ``dest`` (default ``<batch id>.<extension>``).

        ``format``: ``csv``, ``json``, ``ecsv``, ``fits`` (binary table), ``votable`` or
        ``parquet``.

        The file appears complete or not at all: it is written next to ``dest`` (whose
        folder is created if needed) and renamed when the last byte arrived.

        Returns
        -------
        Path
            Where the results are.
        """
        path, part = results_destination(batch_id, fmt=format, dest=dest)
        path.parent.mkdir(parents=True, exist_ok=True)
        call_path = f"{batch_path(batch_id)}/results"
        try:
            with self._http.stream("GET", call_path, params={"format": format}) as response:
                if response.is_error:
                    response.read()
                    raise_for_problem(response)
                with part.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise connection_error(self.url, exc) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)
        return path

    def results_table(self, batch_id: str) -> Any:
        """A batch's results (so far) as an ``astropy.table.Table``.

        Columns as in the CSV download, one type each, units on the task columns
        (``inclination`` in deg) and missing answers masked. Read through ECSV.
        """
        call = Call("GET", f"{batch_path(batch_id)}/results", params={"format": "ecsv"})
        return results_table(raise_for_problem(self._send(call)).content)

    def results_dataframe(self, batch_id: str) -> Any:
        """A batch's results as a pandas DataFrame (needs pandas; see ``results_table``).

        Raises
        ------
        ImportError
            Without pandas.
        """
        return as_dataframe(self.results_table(batch_id))

    # -- catalogue and health -----------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        """Task definitions, each with the model versions that serve it."""
        return raise_for_problem(self._send(Call("GET", "/v1/tasks"))).json()

    def models(self) -> list[dict[str, Any]]:
        """Every published model version, as a model card."""
        return raise_for_problem(self._send(Call("GET", "/v1/models"))).json()

    def ready(self) -> dict[str, Any]:
        """The readiness report: ``ready`` plus the ``checks`` (Redis, workers, models).

        A ``503`` that carries the report is returned, not raised: ``ready`` is False.
        """
        return read_readiness(self._send(Call("GET", "/readyz")))
