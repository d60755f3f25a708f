"""/v1/batches ingestion against a real Redis (no worker: chunks stay queued)."""

from __future__ import annotations

import io
import zipfile

import redis
from fastapi.testclient import TestClient

from services.api.settings import ApiSettings
from shared.batchstore import BatchStore
from shared.schemas import BatchRowResult
from tests.helpers.images import png_bytes

PROBLEM = "application/problem+json"


def _store(settings: ApiSettings) -> BatchStore:
    return BatchStore(redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60)


def _queued(settings: ApiSettings) -> int:
    return redis.Redis.from_url(settings.redis_url).llen(settings.celery_queue)


def test_csv_body_is_chunked_and_every_chunk_queued(client: TestClient, settings: ApiSettings) -> None:
    rows = "\n".join(f"g{i},{1000 + i},extra-{i}" for i in range(300))
    resp = client.post(
        "/v1/batches?tasks=inclination",
        content=f"id,pgc,note\n{rows}\n",
        headers={"Content-Type": "text/csv"},
    )
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    assert resp.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["progress"] == {"total": 300, "done": 0, "failed": 0, "pending": 300}
    assert batch["columns"] == ["id", "pgc", "note"]
    expected_chunks = -(-300 // settings.batch_chunk_rows)
    assert batch["chunks"] == expected_chunks and _queued(settings) == expected_chunks
    chunk = _store(settings).chunk(batch["id"], 0)
    assert chunk[0].id == "g0" and chunk[0].input == {"id": "g0", "pgc": "1000", "note": "extra-0"}
    poll = client.get(f"/v1/batches/{batch['id']}")
    assert poll.json()["status"] == "queued" and poll.headers["retry-after"] == "1"


def test_malformed_rows_fail_alone_with_reasons(client: TestClient, settings: ApiSettings) -> None:
    csv_text = "id,name,ra,dec\na,M33,,\nb,,,\nc,M31,1,2,3\nd\ne,,10.5,41.2\n"
    batch = client.post("/v1/batches", content=csv_text, headers={"Content-Type": "text/csv"}).json()
    assert batch["progress"]["total"] == 5
    rows = {r.id: r for r in _store(settings).chunk(batch["id"], 0)}
    assert rows["a"].error is None and rows["e"].error is None
    assert "names no target" in rows["b"].error.detail
    assert "5 fields; the header has 4" in rows["c"].error.detail
    assert "1 fields; the header has 4" in rows["d"].error.detail


def test_results_stream_as_csv_and_json_joining_back_by_id(client: TestClient, settings: ApiSettings) -> None:
    batch = client.post(
        "/v1/batches", content="id,name,mag\nx,M33,5.7\ny,M31,3.4\n", headers={"Content-Type": "text/csv"}
    ).json()
    store = _store(settings)
    rows = store.chunk(batch["id"], 0)
    results = [
        BatchRowResult(row=r.row, id=r.id, input=r.input, status="failed", error=None) for r in rows
    ]
    assert store.record_chunk(batch["id"], 0, results) is True
    assert store.record_chunk(batch["id"], 0, results) is False  # redelivery counts nothing
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["failed"] == 2
    text = client.get(f"/v1/batches/{batch['id']}/results?format=csv").text.splitlines()
    assert text[0].startswith("id,name,mag,row,status,error,object,inclination,inclination_stdev")
    assert text[1].startswith("x,M33,5.7,0,failed")
    as_json = client.get(f"/v1/batches/{batch['id']}/results?format=json").json()
    assert [r["id"] for r in as_json] == ["x", "y"]


def test_zip_of_images_makes_one_row_per_image(client: TestClient, settings: ApiSettings) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes(16))
        zf.writestr("sub/b.png", png_bytes(20))
        zf.writestr("notes.txt", "ignored")
    resp = client.post("/v1/batches", files={"file": ("imgs.zip", buf.getvalue(), "application/zip")})
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    assert batch["progress"]["total"] == 2
    store = _store(settings)
    assert store.file(batch["id"], "sub/b.png") == png_bytes(20)
    assert [r.input["file"] for r in store.chunk(batch["id"], 0)] == ["a.png", "sub/b.png"]


def test_zip_catalog_naming_a_missing_file_fails_that_row(client: TestClient, settings: ApiSettings) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes(16))
        zf.writestr("catalog.csv", "id,file,z\n1,a.png,0.1\n2,gone.png,0.2\n")
    batch = client.post("/v1/batches", files={"file": ("c.zip", buf.getvalue(), "application/zip")}).json()
    rows = _store(settings).chunk(batch["id"], 0)
    assert rows[0].error is None and "gone.png" in rows[1].error.detail


def test_json_rows_with_tasks_in_the_body(client: TestClient) -> None:
    resp = client.post(
        "/v1/batches", json={"rows": [{"id": 1, "pgc": 2557}, {"id": 2, "ra": 10.6, "dec": 41.2}], "tasks": ["inclination"]}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["columns"] == ["id", "pgc", "ra", "dec"]


def test_whole_request_problems(client: TestClient, settings: ApiSettings) -> None:
    cases = [
        ({"content": "id,colour\n1,red\n", "headers": {"Content-Type": "text/csv"}}, 422, "no column"),
        ({"content": "id,pgc\n", "headers": {"Content-Type": "text/csv"}}, 422, "no rows"),
        ({"content": "", "headers": {"Content-Type": "text/csv"}}, 422, "empty"),
        ({"content": b"\x00\x01", "headers": {"Content-Type": "application/octet-stream"}}, 415, "text/csv"),
        ({"content": "{not json", "headers": {"Content-Type": "application/json"}}, 422, "JSON"),
        ({"files": {"file": ("x.zip", b"PK nonsense", "application/zip")}}, 422, "zip"),
    ]
    for kwargs, status, words in cases:
        resp = client.post("/v1/batches", **kwargs)
        assert resp.status_code == status, (kwargs, resp.text)
        assert resp.headers["content-type"] == PROBLEM
        assert words in resp.json()["detail"], resp.json()
    unknown_task = client.post(
        "/v1/batches?tasks=astrology", content="id,pgc\n1,2\n", headers={"Content-Type": "text/csv"}
    )
    assert unknown_task.status_code == 422
    assert _queued(settings) == 0


def test_cancel_and_idempotency(client: TestClient, settings: ApiSettings) -> None:
    kwargs = {"content": "id,pgc\n1,2557\n", "headers": {"Content-Type": "text/csv", "Idempotency-Key": "b1"}}
    first = client.post("/v1/batches", **kwargs)
    second = client.post("/v1/batches", **kwargs)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"] and _queued(settings) == 1
    cancelled = client.delete(f"/v1/batches/{first.json()['id']}")
    assert cancelled.json()["status"] == "cancelled"
    assert client.get("/v1/batches/" + "f" * 32).status_code == 404


def test_each_chunk_is_queued_as_soon_as_it_and_its_images_are_stored(
    settings: ApiSettings,
) -> None:
    # The ingest step the route runs, on a real zip and a real Redis: when chunk k is
    # handed to the queue, its rows and every image they name are in Redis already and
    # the chunks after it are not stored yet (workers start while the zip is unpacked).
    from services.api.batch_ingest import ingest, open_zip, zip_rows

    store = _store(settings)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(5):
            zf.writestr(f"g{k}.png", png_bytes(16, seed=k))
    batch_id = "a" * 32
    columns, rows, names = zip_rows(
        open_zip(io.BytesIO(buf.getvalue())), store=store, batch_id=batch_id,
        max_file_bytes=10**6, max_total_bytes=10**7,
    )
    seen: list[int] = []

    def queued(index: int) -> None:
        for row in store.chunk(batch_id, index):
            assert store.file(batch_id, row.input["file"]) is not None
        assert not store.redis.exists(store.key(batch_id, "chunk", index + 1))
        assert store.file(batch_id, f"g{2 * index + 2}.png") is None  # next chunk's image: not yet
        seen.append(index)

    count, chunks = ingest(
        rows, store=store, batch_id=batch_id, columns=columns, id_column="id",
        chunk_rows=2, max_rows=100, zip_files=names, on_chunk=queued,
    )
    assert (count, chunks, seen) == (5, 3, [0, 1, 2])
    store.discard(batch_id)


def test_column_names_are_matched_without_case(client: TestClient, settings: ApiSettings) -> None:
    csv_text = "ID,Name,RA,DEC,PGC,Note\na,M33,,,,x\nb,,10.5,41.2,,y\nc,,,,2557,z\nd,,,,,w\n"
    resp = client.post("/v1/batches", content=csv_text, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    assert batch["columns"] == ["ID", "Name", "RA", "DEC", "PGC", "Note"]  # kept as sent
    assert batch["id_column"] == "ID"
    rows = {r.id: r for r in _store(settings).chunk(batch["id"], 0)}
    assert set(rows) == {"a", "b", "c", "d"}
    assert rows["a"].error is None and rows["b"].error is None and rows["c"].error is None
    assert "names no target" in rows["d"].error.detail
    only_upper = client.post(
        "/v1/batches", content="Image_URL\nhttp://x/y.png\n", headers={"Content-Type": "text/csv"}
    )
    assert only_upper.status_code == 202, only_upper.text


def test_a_file_that_is_not_a_csv_is_refused_saying_what_was_expected(
    client: TestClient, settings: ApiSettings
) -> None:
    image = png_bytes(32)
    for kwargs in (
        {"files": {"file": ("galaxy.png", image, "image/png")}},
        {"files": {"file": ("catalog.csv", image, "text/csv")}},
        {"content": image, "headers": {"Content-Type": "text/csv"}},
        {"content": "id,name\n1,M33\n".encode("utf-16"), "headers": {"Content-Type": "text/csv"}},
    ):
        resp = client.post("/v1/batches", **kwargs)
        assert resp.status_code == 415, (kwargs, resp.text)
        assert resp.headers["content-type"] == PROBLEM
        detail = resp.json()["detail"]
        assert "not a CSV" in detail and "header row" in detail, detail
    assert "PNG image" in client.post(
        "/v1/batches", files={"file": ("galaxy.png", image, "image/png")}
    ).json()["detail"]
    # A zip under another name is read as the zip it is.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes(16))
    as_zip = client.post("/v1/batches", files={"file": ("upload.bin", buf.getvalue(), "application/octet-stream")})
    assert as_zip.status_code == 202, as_zip.text
    assert _queued(settings) == 1


def test_a_batch_refused_part_way_leaves_nothing_though_chunks_were_queued(
    settings: ApiSettings,
) -> None:
    from fastapi.testclient import TestClient as Client

    from services.api.app import create_app

    small = settings.model_copy(update={"batch_chunk_rows": 2, "max_batch_rows": 5})
    rows = "id,pgc\n" + "".join(f"g{k},{1000 + k}\n" for k in range(8))
    with Client(create_app(small), raise_server_exceptions=False) as client:
        key = {"Idempotency-Key": "part-way"}
        resp = client.post("/v1/batches", content=rows, headers={"Content-Type": "text/csv", **key})
        assert resp.status_code == 422 and "more than 5 rows" in resp.json()["detail"]
        # Two chunks went to the queue while the catalog was read; the batch they name is
        # gone, so a worker drops them (tests/shared/test_batchstore.py), and nothing stays.
        assert _queued(settings) == 2
        assert list(redis.Redis.from_url(settings.redis_url).scan_iter(match=f"{settings.key_prefix}:*")) == []
        fixed = client.post(
            "/v1/batches", content="id,pgc\ng1,2557\n", headers={"Content-Type": "text/csv", **key}
        )
        assert fixed.status_code == 202  # the key was not used up
