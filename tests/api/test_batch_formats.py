"""Batch results as CSV, JSON, ECSV, FITS, VOTable and Parquet, read back by their own readers."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from astropy.io import fits
from astropy.table import Table
from fastapi.testclient import TestClient

from services.api.settings import ApiSettings
from shared.batchstore import BatchStore
from shared.schemas import BatchRowResult, MemberAnswer, Problem, TaskResult

MEDIA = {
    "csv": "text/csv",
    "json": "application/json",
    "ecsv": "text/x-ecsv",
    "fits": "application/fits",
    "votable": "application/x-votable+xml",
    "parquet": "application/vnd.apache.parquet",
}


@pytest.fixture
def finished_batch(client: TestClient, settings: ApiSettings) -> str:
    """A batch of three rows recorded as a worker would: two answers and one failure."""
    batch = client.post(
        "/v1/batches?tasks=inclination",
        content="id,name,ra,mag\n007,M33,23.46,5.7\ng2,M31,10.68,3.4\ng3,Nowhere,1.0,\n",
        headers={"Content-Type": "text/csv"},
    ).json()
    store = BatchStore(
        redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60
    )
    results = []
    for row, value in zip(store.chunk(batch["id"], 0), (55.25, 71.5, None), strict=True):
        if value is None:
            problem = Problem(title="No catalogued object matches", status=404, detail="Unknown.")
            results.append(
                BatchRowResult(row=row.row, id=row.id, input=row.input, status="failed", error=problem)
            )
            continue
        answer = TaskResult(
            task="inclination",
            kind="regression",
            model_version=1,
            unit="deg",
            value=value,
            summary={"mean": value, "median": value, "stdev": 0.5, "min": value, "max": value},
            members=[MemberAnswer(member="m0", architecture="tiny", value=value)],
        )
        results.append(
            BatchRowResult(
                row=row.row,
                id=row.id,
                input=row.input,
                status="succeeded",
                resolved={"name": row.input["name"]},
                result={"inclination": answer},
            )
        )
    assert store.record_chunk(batch["id"], 0, results)
    return batch["id"]


@pytest.mark.parametrize("fmt", list(MEDIA))
def test_every_format_has_its_media_type_and_a_file_name(
    client: TestClient, finished_batch: str, fmt: str
) -> None:
    resp = client.get(f"/v1/batches/{finished_batch}/results", params={"format": fmt})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].split(";")[0] == MEDIA[fmt]
    if fmt != "json":
        extension = {"votable": "vot"}.get(fmt, fmt)
        assert f'skyserve-{finished_batch}.{extension}"' in resp.headers["content-disposition"]


def _read(client: TestClient, batch_id: str, fmt: str) -> Table:
    body = client.get(f"/v1/batches/{batch_id}/results", params={"format": fmt}).content
    if fmt == "fits":
        with fits.open(io.BytesIO(body)) as hdul:
            assert isinstance(hdul[1], fits.BinTableHDU)  # a real binary table, not JSON
        return Table.read(io.BytesIO(body), format="fits")
    if fmt == "votable":
        return Table.read(io.BytesIO(body), format="votable")
    if fmt == "parquet":
        return Table.read(io.BytesIO(body), format="parquet")
    return Table.read(body.decode(), format="ascii.ecsv")


@pytest.mark.parametrize("fmt", ["ecsv", "fits", "votable", "parquet"])
def test_astronomy_formats_round_trip(client: TestClient, finished_batch: str, fmt: str) -> None:
    table = _read(client, finished_batch, fmt)
    assert len(table) == 3
    assert list(table["id"]) == ["007", "g2", "g3"]  # the id column stays text
    assert table["ra"].dtype.kind == "f" and table["ra"][1] == pytest.approx(10.68)
    assert list(table["status"]) == ["succeeded", "succeeded", "failed"]
    incl = table["inclination"]
    assert incl[0] == pytest.approx(55.25) and incl[1] == pytest.approx(71.5)
    third = incl[2]
    assert np.ma.is_masked(third) or math.isnan(float(third))  # no answer: missing, not 0
    if fmt != "parquet":  # astropy reads Parquet units only from its own metadata
        assert str(table["inclination"].unit) == "deg"
    assert "Unknown." in str(table["error"][2])


def test_parquet_carries_units_in_its_schema(client: TestClient, finished_batch: str) -> None:
    body = client.get(f"/v1/batches/{finished_batch}/results", params={"format": "parquet"}).content
    schema = pq.read_schema(io.BytesIO(body))
    assert schema.field("inclination").metadata[b"unit"] == b"deg"
    assert pq.read_table(io.BytesIO(body)).column("inclination").null_count == 1


def test_fits_and_votable_names_are_safe(client: TestClient, finished_batch: str) -> None:
    for fmt in ("fits", "votable"):
        table = _read(client, finished_batch, fmt)
        assert all(name.replace("_", "").isalnum() for name in table.colnames), table.colnames


def test_unknown_format_is_a_422(client: TestClient, finished_batch: str) -> None:
    resp = client.get(f"/v1/batches/{finished_batch}/results", params={"format": "xlsx"})
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
