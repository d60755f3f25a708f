"""A 10,000-row catalog through the ``skyserve batch`` CLI, the API over real HTTP (uvicorn),
Redis, a real prefork worker (two processes), and the local cutout stand-in with the
worker's cutout cache on."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.api.app import create_app
from services.client.cli import app as cli
from tests.helpers.live_server import LiveServer, serve
from tests.helpers.system import System, running_system

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROWS = 10_000
NAMES = [
    "M31",
    "M33",
    "M51",
    "M63",
    "M64",
    "M65",
    "M66",
    "M74",
    "M77",
    "M81",
    "M82",
    "M83",
    "M88",
    "M90",
    "M94",
    "M95",
    "M96",
    "M98",
    "M99",
    "M100",
    "M101",
    "M104",
    "M106",
    "M108",
    "M109",
    "NGC 253",
    "NGC 891",
    "NGC 2403",
    "NGC 2841",
    "NGC 3115",
    "NGC 3628",
    "NGC 4013",
    "NGC 4216",
    "NGC 4565",
    "NGC 4631",
    "NGC 5907",
    "NGC 6946",
    "NGC 7331",
    "IC 342",
    "NGC 3521",
]
POSITIONS = 50


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("cli-batch")
    with running_system(
        redis_url,
        tmp,
        worker={"cutout_cache_dir": str(tmp / "cutout-cache")},
        pool="prefork",
        concurrency=2,
        api={"batch_chunk_rows": 128},
    ) as started:
        yield started


@pytest.fixture(scope="module")
def live(system: System) -> Iterator[LiveServer]:
    with serve(create_app(system.api_settings)) as server:
        yield server


def _catalog(path: Path, base_url: str) -> list[dict[str, str]]:
    """Names (70 %), positions (20 %) and image URLs (10 %), with two extra columns."""
    rows = []
    for i in range(ROWS):
        row = {"id": f"obj{i:05d}", "name": "", "ra": "", "dec": "", "image_url": ""}
        kind, n = i % 10, i // 10
        if kind < 7:
            row["name"] = NAMES[(7 * n + kind) % len(NAMES)]
        elif kind < 9:
            row["ra"], row["dec"] = f"{150 + ((2 * n + kind - 7) % POSITIONS) * 0.1:.1f}", "2.0"
        else:
            row["image_url"] = f"{base_url}/images/g{n % 100}.png"
        row["survey"] = f"field-{i % 7}"
        row["weight"] = f"{(i % 13) / 13:.4f}"
        rows.append(row)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_ten_thousand_rows_through_the_cli(
    system: System, live: LiveServer, tmp_path: Path
) -> None:
    catalog, out = tmp_path / "catalog.csv", tmp_path / "results.csv"
    rows = _catalog(catalog, system.stand_in.base_url)

    result = CliRunner().invoke(
        cli,
        [
            "--url",
            live.url,
            "batch",
            str(catalog),
            "--task",
            "inclination",
            "--out",
            str(out),
            "--poll",
            "0.5",
            "--timeout",
            "800",
            "--strict",
        ],
        env={"COLUMNS": "120"},
    )

    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        results = list(csv.DictReader(handle))
    assert len(results) == ROWS
    by_id = {r["id"]: r for r in results}
    assert len(by_id) == ROWS
    for given in rows:
        got = by_id[given["id"]]
        assert {k: got[k] for k in given} == given
        assert got["status"] == "succeeded" and got["inclination"], got
    assert (by_id["obj00000"]["object"], by_id["obj00001"]["object"]) == ("NGC0224", "NGC0598")
    # Every object and position was fetched, and the cache kept it to about one fetch each
    # (concurrent misses of one URL may both fetch it) instead of one per row.
    asked = system.stand_in.cutout_requests()
    positions = {(r.query["ra"], r.query["dec"]) for r in asked}
    assert len(positions) == len(NAMES) + POSITIONS
    assert len(asked) <= 4 * len(positions)  # vs 9,000 target rows
