"""Batches end to end: a catalog through the API, chunked into Redis, answered by a real
worker process that resolves names, fetches cutouts and image URLs from a real local
HTTP server, reads zip images, and runs one ONNX inference per task per chunk.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.worker.inference import predict
from services.worker.sessions import SessionCache
from shared.preprocessing import preprocess
from shared.registry import RegistryReader
from tests.helpers.images import ellipse, encode, png_bytes
from tests.helpers.system import System, running_system

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COLUMNS = ["id", "file", "image_url", "pgc", "name", "ra", "dec", "magnitude", "notes"]


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("batches")) as started:
        yield started


@pytest.fixture
def api(system: System) -> Iterator[TestClient]:
    with system.api() as client:
        yield client


def _csv_text(rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _results_csv(api: TestClient, batch_id: str) -> list[dict[str, str]]:
    resp = api.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.text)))


def _results_json(api: TestClient, batch_id: str) -> list[dict]:
    resp = api.get(f"/v1/batches/{batch_id}/results", params={"format": "json"})
    assert resp.status_code == 200
    return resp.json()


def _inclination(registry_cache: SessionCache, data: bytes) -> float:
    model = registry_cache.get("inclination")
    (result,) = predict(
        registry_cache.task_definitions["inclination"],
        model,
        preprocess(data, model.manifest.input)[np.newaxis],
        max_batch_size=32,
    )
    return float(result.value)


def test_a_zip_of_targets_urls_and_images_runs_and_joins_back_by_id(
    system: System, api: TestClient
) -> None:
    url = system.stand_in.base_url
    jpeg = encode(ellipse(48, axis_ratio=0.7, seed=3), "JPEG", quality=90)
    images = {"imgs/a.png": png_bytes(40, seed=1), "imgs/b.jpg": jpeg}
    rows = [
        {"id": "z1", "file": "imgs/a.png", "magnitude": "12.1", "notes": "zip, png"},
        {"id": "z2", "file": "imgs/b.jpg", "magnitude": "12.5", "notes": 'zip "jpeg"'},
        {"id": "u1", "image_url": f"{url}/images/one.png", "magnitude": "13.0", "notes": "url"},
        {"id": "u2", "image_url": f"{url}/images/two.png", "magnitude": "", "notes": "url"},
        {"id": "n1", "name": "M33", "magnitude": "5.7", "notes": "messier"},
        {"id": "n2", "name": "NGC 4565", "magnitude": "10.4", "notes": "ngc"},
        {"id": "n3", "name": "whirlpool galaxy", "magnitude": "8.4", "notes": "common name"},
        {"id": "p1", "pgc": "2557", "magnitude": "3.4", "notes": "pgc"},
        {"id": "c1", "ra": "10.6848", "dec": "41.2689", "magnitude": "", "notes": "degrees"},
        {"id": "c2", "ra": "00h42m44.3s", "dec": "+41d16m09s", "magnitude": "", "notes": "hms"},
        {"id": "c3", "ra": "123.0", "dec": "-5.0", "magnitude": "", "notes": "empty sky"},
    ]
    full_rows = [{c: row.get(c, "") for c in COLUMNS} for row in rows]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("catalog.csv", _csv_text(full_rows))
        for name, data in images.items():
            zf.writestr(name, data)

    resp = api.post(
        "/v1/batches",
        files={"file": ("catalog.zip", archive.getvalue(), "application/zip")},
        data={"tasks": "inclination"},
    )
    assert resp.status_code == 202, resp.text
    batch = system.wait_batch(api, resp.json()["id"])

    assert batch["status"] == "succeeded"
    assert batch["progress"] == {"total": 11, "done": 11, "failed": 0, "pending": 0}
    results = _results_csv(api, batch["id"])
    by_id = {r["id"]: r for r in results}
    assert len(results) == len(rows) and set(by_id) == {r["id"] for r in rows}
    for given in full_rows:
        got = by_id[given["id"]]
        assert {c: got[c] for c in COLUMNS} == given  # every input column comes back as sent
        assert got["status"] == "succeeded" and got["error"] == ""
        assert 0.0 <= float(got["inclination"]) <= 90.0 and got["inclination_version"] == "1"
    objects = {r["id"]: r["object"] for r in results}
    assert objects == {
        "z1": "",
        "z2": "",
        "u1": "",
        "u2": "",
        "n1": "NGC0598",
        "n2": "NGC4565",
        "n3": "NGC5194",
        "p1": "NGC0224",
        "c1": "NGC0224",
        "c2": "NGC0224",
        "c3": "",
    }
    # Zip images and URL images were answered from exactly their bytes.
    cache = SessionCache(RegistryReader(system.registry), providers=["CPUExecutionProvider"])
    for rid, data in (("z1", images["imgs/a.png"]), ("z2", jpeg)):
        assert float(by_id[rid]["inclination"]) == pytest.approx(
            _inclination(cache, data), abs=1e-5
        )
    served = httpx.get(f"{url}/images/one.png").content
    assert float(by_id["u1"]["inclination"]) == pytest.approx(_inclination(cache, served), abs=1e-5)
    # The JSON results carry the resolved object and every member's answer.
    items = {item["id"]: item for item in _results_json(api, batch["id"])}
    assert items["n1"]["resolved"]["name"] == "NGC0598" and "resolved" not in items["u1"]
    assert len(items["n1"]["result"]["inclination"]["members"]) == 3
    assert len(system.stand_in.requests_for("/images/two.png")) == 1


def test_five_percent_bad_rows_fail_alone_each_with_its_reason(
    system: System, api: TestClient
) -> None:
    url, dead = system.stand_in.base_url, system.dead_url
    names = ["M33", "NGC 4565", "M104", "M51", "NGC 891", "M81", "M82", "NGC 253", "M101", "IC 342"]
    header = "id,name,ra,dec,image_url,notes"
    bad = {  # id → (CSV line, expected problem code)
        "bad-long": ("bad-long,M33,,,,note,EXTRA,MORE", "invalid-row"),
        "bad-short": ("bad-short,M33", "invalid-row"),
        "bad-long2": ("bad-long2,,1,2,,x,y", "invalid-row"),
        "bad-name1": ("bad-name1,Galaxy That Does Not Exist,,,,", "unknown-target"),
        "bad-name2": ("bad-name2,NGC 99999,,,,", "unknown-target"),
        "bad-name3": ("bad-name3,Andromeda Galxy,,,,", "unknown-target"),
        "bad-dead1": (f"bad-dead1,,,,{dead}/images/a.png,", "cutout-unavailable"),
        "bad-dead2": (f"bad-dead2,,,,{dead}/images/b.png,", "cutout-unavailable"),
        "bad-html1": (f"bad-html1,,,,{url}/text/page.html,", "unsupported-media-type"),
        "bad-html2": (f"bad-html2,,,,{url}/text/other.html,", "unsupported-media-type"),
        "bad-host": ("bad-host,,,,http://images.example.invalid/g.png,", "host-not-allowed"),
    }
    good: list[str] = []
    for i in range(209):
        if i % 3 == 0:
            good.append(f"g{i:03d},{names[i % len(names)]},,,,name {i}")
        elif i % 3 == 1:
            good.append(f"g{i:03d},,{150 + i * 0.05:.4f},{2 + i * 0.01:.4f},,position {i}")
        else:
            good.append(f"g{i:03d},,,,{url}/images/g{i}.png,url {i}")
    lines = list(good)
    for k, (line, _) in enumerate(bad.values()):  # spread the bad rows through the catalog
        lines.insert(7 + 19 * k, line)
    body = "\n".join([header, *lines]) + "\n"
    assert len(lines) == 220 and len(bad) == 11  # 5 %

    resp = api.post("/v1/batches", content=body.encode(), headers={"content-type": "text/csv"})
    assert resp.status_code == 202, resp.text
    batch = system.wait_batch(api, resp.json()["id"])

    assert batch["status"] == "succeeded"
    assert batch["progress"] == {"total": 220, "done": 209, "failed": 11, "pending": 0}
    results = _results_csv(api, batch["id"])
    assert len(results) == 220
    failed = {r["id"]: r["error"] for r in results if r["status"] == "failed"}
    assert set(failed) == set(bad)
    assert all(reason for reason in failed.values())
    assert all(
        r["status"] == "succeeded" and r["inclination"] for r in results if r["id"] not in bad
    )
    problems = {
        item["id"]: item["error"] for item in _results_json(api, batch["id"]) if "error" in item
    }
    assert {rid: p["code"] for rid, p in problems.items()} == {
        rid: c for rid, (_, c) in bad.items()
    }
    assert "Did you mean" in problems["bad-name3"]["detail"]
    assert "connection failed" in problems["bad-dead1"]["detail"]
    assert "text/html" in problems["bad-html1"]["detail"]


def test_a_chunks_fetches_run_concurrently(system: System, api: TestClient) -> None:
    rows = [{"id": f"p{i}", "ra": f"{60 + i:.1f}", "dec": "-20.0"} for i in range(12)]
    system.stand_in.delay_s = 0.3  # slow enough that concurrent requests overlap
    system.stand_in.clear()
    try:
        resp = api.post(
            "/v1/batches",
            content=_csv_text(rows, ["id", "ra", "dec"]).encode(),
            headers={"content-type": "text/csv"},
        )
        batch = system.wait_batch(api, resp.json()["id"])
    finally:
        system.stand_in.delay_s = 0.0

    assert batch["status"] == "succeeded" and batch["progress"]["done"] == 12
    # One chunk of 12 rows, one solo worker process: the overlap is its fetch threads.
    assert resp.json()["chunks"] == 1
    assert system.stand_in.peak_in_flight >= 4


def test_a_redelivered_chunk_is_not_counted_twice(system: System, api: TestClient) -> None:
    rows = [
        {"id": f"r{i}", "ra": f"{30 + i:.1f}", "dec": "10.0", "notes": str(i)} for i in range(10)
    ]
    body = _csv_text(rows, ["id", "ra", "dec", "notes"])

    with system.api(batch_chunk_rows=4) as small_chunks:
        resp = small_chunks.post(
            "/v1/batches", content=body.encode(), headers={"content-type": "text/csv"}
        )
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["id"]
    assert resp.json()["chunks"] == 3
    for chunk in (0, 1, 2, 0, 1, 2):  # every chunk delivered twice more, while the batch runs
        system.send_chunk(batch_id, chunk)
    first = system.wait_batch(api, batch_id)
    before = _results_json(api, batch_id)
    for chunk in (0, 1, 2):  # and once more after it finished
        system.send_chunk(batch_id, chunk)
    system.drain(api)

    after = api.get(f"/v1/batches/{batch_id}").json()
    assert first["progress"] == after["progress"] == {"total": 10, "done": 10, "failed": 0, "pending": 0}
    assert after["status"] == "succeeded"
    assert _results_json(api, batch_id) == before and len(before) == 10
    counts = system.redis.hgetall(system.batches.key(batch_id, "counts"))
    assert counts[b"chunks_done"] == b"3"
    log = system.worker_log.read_text()
    assert log.count(f"Batch {batch_id} chunk 0 is already recorded") == 3


def test_cancel_stops_the_chunks_not_yet_run(system: System, api: TestClient) -> None:
    rows = [{"id": f"s{i}", "ra": f"{200 + i * 0.1:.2f}", "dec": "10.0"} for i in range(40)]
    body = _csv_text(rows, ["id", "ra", "dec"])
    system.stand_in.delay_s = 0.2  # each cutout takes a while, so the batch is caught mid-way
    try:
        with system.api(batch_chunk_rows=2) as small_chunks:
            resp = small_chunks.post(
                "/v1/batches", content=body.encode(), headers={"content-type": "text/csv"}
            )
            assert resp.status_code == 202 and resp.json()["chunks"] == 20
            batch_id = resp.json()["id"]
            deadline = time.monotonic() + 30
            while api.get(f"/v1/batches/{batch_id}").json()["progress"]["done"] < 2:
                assert time.monotonic() < deadline, "the first chunk never finished"
                time.sleep(0.05)
            cancelled = api.delete(f"/v1/batches/{batch_id}")
    finally:
        system.stand_in.delay_s = 0.0
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    ran_before = cancelled.json()["progress"]["done"] + cancelled.json()["progress"]["failed"]

    system.drain(api)

    final = api.get(f"/v1/batches/{batch_id}").json()
    ran = final["progress"]["done"] + final["progress"]["failed"]
    assert final["status"] == "cancelled"
    assert ran <= ran_before + 2  # at most the chunk that was running when cancelled
    assert ran < 40 and final["progress"]["total"] == 40
    assert len(_results_json(api, batch_id)) == ran
    # Every other chunk was skipped by the worker, not run.
    skipped = system.worker_log.read_text().count("the batch is cancelled; not running it")
    assert skipped == 20 - ran // 2
