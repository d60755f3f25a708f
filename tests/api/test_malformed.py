"""Every malformed request is a 4xx problem document that says what to fix (issue 8).

Against the real API (real Redis, a real tiny registry, no worker). The first eleven
cases are the ones that answered 500 before; the rest are their neighbours.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.jobstore import JobStore
from shared.schemas import JobResult, MemberAnswer, TaskResult
from tests.helpers.images import png_bytes
from tests.helpers.live_server import serve

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int | tuple[int, ...], *words: str) -> dict:
    """A problem document with the status, a detail naming what to fix, no 5xx."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["status"] == resp.status_code and body["detail"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
    return body


def _zip(*entries: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


def _patch_local_header(data: bytes, *, flag: int | None = None, method: int | None = None,
                        crc: int | None = None) -> bytes:
    """Edit the first entry's local and central headers, as a hostile client would."""
    raw = bytearray(data)
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    if flag is not None:
        struct.pack_into("<H", raw, local + 6, flag)
        struct.pack_into("<H", raw, central + 8, flag)
    if method is not None:
        struct.pack_into("<H", raw, local + 8, method)
        struct.pack_into("<H", raw, central + 10, method)
    if crc is not None:
        struct.pack_into("<I", raw, local + 14, crc)
        struct.pack_into("<I", raw, central + 16, crc)
    return bytes(raw)


def _upload_zip(client: TestClient, data: bytes) -> httpx.Response:
    return client.post("/v1/batches", files={"file": ("images.zip", data, "application/zip")})


# ------------------------------------------------------------------- the eleven 500s


@pytest.mark.parametrize("pin", ["inclination=²", "inclination=1²", "inclination=" + "9" * 5000,
                                 "²=1", "inclination=-1", "inclination=1.5"])
def test_version_pins_that_are_not_numbers(client: TestClient, pin: str) -> None:
    resp = client.post(
        "/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")}, data={"versions": pin}
    )
    body = assert_problem(resp, 422)
    assert "task=version" in body["detail"] or "not a task name" in body["detail"]
    batch = client.post(f"/v1/batches?versions={pin}", content="id,pgc\na,1\n",
                        headers={"Content-Type": "text/csv"})
    assert_problem(batch, 422)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"rows": [{"pgc": 1}], "tasks": 5}, ["tasks"]),
        ({"rows": [{"pgc": 1}], "tasks": [1]}, ["tasks"]),
        ({"rows": [{"pgc": 1}], "versions": {"x": "x"}}, ["versions"]),
        ({"rows": [{"pgc": 1}], "versions": {"inclination": True}}, ["versions"]),
        ({"rows": [{"pgc": 1}], "versions": [1]}, ["versions"]),
        ({"rows": [{"pgc": 1}], "id_column": 7}, ["id_column"]),
        ({"rows": [{"pgc": 1}], "tasks": ["²"]}, ["task name"]),
        ({"rows": 5}, ['"rows"']),
        ({"rows": []}, ["at least one row"]),
        ({"tasks": ["inclination"]}, ['no "rows"']),
        ([], ["at least one row"]),
        ("just a string", ["list of row objects"]),
    ],
)
def test_json_batches_with_wrong_types(client: TestClient, body: object, words: list[str]) -> None:
    resp = client.post("/v1/batches", json=body)
    assert_problem(resp, 422, *words)


def test_json_batch_syntax_errors_say_where(client: TestClient) -> None:
    for text, word in [('{"rows": [{"pgc": 1}', "malformed"), ("[{]", "malformed"),
                       ('[{"pgc": 1}] trailing', "more after"), (b"\xff\xfe[", "utf-8")]:
        data = text.encode() if isinstance(text, str) else text
        resp = client.post("/v1/batches", content=data, headers={"Content-Type": "application/json"})
        assert_problem(resp, 422, word)


@pytest.mark.parametrize("pgc", ["²", "9" * 5000, 2557.5, True, "PGC ²", "-5"])
def test_target_pgc_that_is_not_a_number(client: TestClient, pgc: object) -> None:
    resp = client.post("/v1/jobs", json={"target": {"pgc": pgc}})
    assert_problem(resp, 422, "pgc")


def test_mixed_and_empty_targets(client: TestClient) -> None:
    assert_problem(client.post("/v1/jobs", json={"target": {}}), 422, "target")
    assert_problem(client.post("/v1/jobs", json={"target": {"name": "x" * 5000}}), 422, "name")
    assert_problem(client.post("/v1/jobs", json={"target": {"ra": "²", "dec": 1}}), 422)
    assert_problem(client.post("/v1/jobs", json={"target": {"ra": 1e308, "dec": 1}}), 422)
    assert_problem(client.post("/v1/jobs", json={"target": {"pgc": 2557}, "versions": {"inclination": "1"}}), 422)
    assert_problem(client.post("/v1/jobs", json={"target": [1]}), 422)
    assert_problem(
        client.post("/v1/jobs", content=b'{"target": {"ra": NaN, "dec": 1}}',
                    headers={"Content-Type": "application/json"}),
        422,
    )


def test_zip_with_a_bad_crc(client: TestClient) -> None:
    data = _patch_local_header(_zip(("a.png", png_bytes(16))), crc=0x12345678)
    assert_problem(_upload_zip(client, data), 422, "a.png", "corrupt")


def test_zip_with_the_encryption_flag(client: TestClient) -> None:
    data = _patch_local_header(_zip(("a.png", png_bytes(16))), flag=0x1)
    assert_problem(_upload_zip(client, data), 422, "encrypted", "without a password")


def test_zip_with_compression_method_99(client: TestClient) -> None:
    data = _patch_local_header(_zip(("a.png", png_bytes(16))), method=99)
    assert_problem(_upload_zip(client, data), 422, "compression method 99", "deflate")


# ------------------------------------------------------------------- neighbours


def test_zip_bombs_and_broken_archives(client: TestClient, settings: ApiSettings) -> None:
    bomb = _zip(("catalog.csv", b"id,pgc\n" + b"a,1\n" * 1_000_000))  # 4 MB from ~10 kB
    assert_problem(_upload_zip(client, bomb), 413, "zip bomb")
    assert_problem(_upload_zip(client, b"PK\x03\x04 not really"), 422, "not a valid zip")
    assert_problem(_upload_zip(client, _zip(("notes.txt", b"hello"))), 422, "no images")
    truncated = _zip(("a.png", png_bytes(64)))
    assert_problem(_upload_zip(client, truncated[: len(truncated) // 2]), 422)
    # Entry count past the limit.
    with TestClient(create_app(settings.model_copy(update={"max_zip_entries": 3})),
                    raise_server_exceptions=False) as small:
        many = _zip(*[(f"{i}.png", png_bytes(8)) for i in range(4)])
        assert_problem(_upload_zip(small, many), 413, "4 files", "limit is 3")


def test_corrupt_catalog_inside_a_zip(client: TestClient) -> None:
    data = _zip(("catalog.csv", b"id,file\na,a.png\n"), ("a.png", png_bytes(16)))
    # Corrupt the catalog's CRC (it is the first entry).
    assert_problem(_upload_zip(client, _patch_local_header(data, crc=1)), 422, "catalog.csv")


def test_wrong_content_types_and_shapes(client: TestClient) -> None:
    assert_problem(client.post("/v1/jobs", content=b"\x89PNG", headers={"Content-Type": "image/png"}), 415)
    assert_problem(client.post("/v1/batches", content=b"x", headers={"Content-Type": "image/png"}), 415)
    assert_problem(client.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}), 422)
    assert_problem(
        client.post("/v1/jobs", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        (400, 422),
    )
    assert_problem(client.post("/v1/jobs", files={"file": ("g.png", png_bytes(8), "image/png")},
                               data={"tasks": "x" * 500}), 422, "task name")
    assert_problem(client.get("/v1/jobs/" + "a" * 32, params={"wait": "nan"}), 422)
    assert_problem(client.get("/v1/jobs/" + "a" * 32, params={"wait": "1e400"}), 422)
    assert_problem(client.get("/v1/batches/" + "a" * 32 + "/results", params={"format": "xml"}), 422)
    assert_problem(client.get("/v1/models/inclination/99999999999999999999999"), (404, 422))
    assert_problem(client.put("/v1/jobs"), 405)


def test_a_stored_answer_with_nan_stays_readable(client: TestClient, settings: ApiSettings) -> None:
    job = client.post("/v1/jobs", files={"file": ("g.png", png_bytes(32), "image/png")}).json()
    store = JobStore(redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, ttl_seconds=60)
    nan = float("nan")
    result = TaskResult(
        task="inclination", kind="regression", model_version=1, value=nan,
        summary={"mean": nan, "median": nan, "stdev": nan},
        members=[MemberAnswer(member="m", architecture="a", value=nan, tta_values=[nan, 1.0])],
    )
    store.succeed(job["id"], JobResult(tasks={"inclination": result}, models={"inclination": 1}))
    got = client.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200, got.text
    assert got.json()["result"]["tasks"]["inclination"]["summary"]["mean"] is None
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409)


# ------------------------------------------------------------------- sizes, counted as they stream


@pytest.fixture
def live(settings: ApiSettings) -> Iterator[str]:
    small = settings.model_copy(update={"max_batch_bytes": 200_000, "max_upload_bytes": 100_000})
    with serve(create_app(small)) as server:
        yield server.url


def _chunks(total: int, piece: bytes = b"a,1\n") -> Iterator[bytes]:
    yield b"id,pgc\n"
    block = piece * (16384 // len(piece))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)


def test_chunked_uploads_stop_at_the_limit(live: str) -> None:
    # No Content-Length: the body is counted as it streams, and refused past the limit.
    with httpx.Client(base_url=live, timeout=30) as http:
        csv_resp = http.post("/v1/batches", content=_chunks(2_000_000), headers={"Content-Type": "text/csv"})
        assert_problem(csv_resp, 413)
        head = (b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="g.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        image = http.post(
            "/v1/jobs",
            content=iter([head, *_chunks(2_000_000)]),
            headers={"Content-Type": "multipart/form-data; boundary=zzz"},
        )
        assert_problem(image, 413)
        big_json = http.post("/v1/jobs", content=iter([b'{"target": {"name": "' + b"x" * 100_000 + b'"}}']),
                             headers={"Content-Type": "application/json"})
        assert_problem(big_json, 413, "65,536")
        declared = http.post("/v1/batches", content=b"x" * 300_000, headers={"Content-Type": "text/csv"})
        assert_problem(declared, 413, "300000")
        # A multipart CSV or JSON file larger than the limit is refused the same way.
        for name in ("big.csv", "big.json"):
            multipart = http.post("/v1/batches", files={"file": (name, b"id,pgc\n" + b"a,1\n" * 100_000)})
            assert_problem(multipart, 413)
        assert http.get("/healthz").status_code == 200


def test_a_bug_answers_500_and_keeps_the_connection(settings: ApiSettings) -> None:
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with serve(app) as server:
        parts = urlsplit(server.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/boom")
        first = conn.getresponse()
        body = json.loads(first.read())
        assert first.status == 500 and body["code"] == "internal" and "RuntimeError" in body["detail"]
        assert (first.getheader("connection") or "").lower() != "close"
        sock = conn.sock
        conn.request("GET", "/healthz")  # the same connection, still open
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["status"] == "ok"
        assert conn.sock is sock
        conn.close()


@pytest.mark.parametrize(
    ("path", "what"),
    [("/v1/jobs/nosuch", "job"), ("/v1/batches/ABC", "batch"), ("/v1/batches/x/results", "batch")],
)
def test_a_malformed_id_is_explained_in_words(client: TestClient, path: str, what: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert f"is not a {what} id: ids are 32 lowercase hexadecimal characters" in detail, detail
    assert "should match pattern" not in detail
