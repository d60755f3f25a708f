"""The CLI's new front door: positional targets, every --out format, failures said once.

Against the real API over HTTP with a real Redis; the stand-in worker writes answers
through the worker's own stores.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import Result
from typer.testing import CliRunner

from services.client import SkyserveClient
from services.client.cli import app
from shared.errors import CutoutUnavailable
from tests.client.stand_in import VALUE, StandInWorker
from tests.helpers.images import png_bytes
from tests.helpers.live_server import LiveServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cli(live_api: LiveServer):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, ["--url", live_api.url, *args], env={"COLUMNS": "200"})

    return run


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "galaxy.png"
    path.write_bytes(png_bytes(40, seed=1))
    return path


@pytest.mark.parametrize(
    ("argument", "resolved"),
    [
        ("M33", "NGC0598"),
        ("PGC 2557", "NGC0224"),
        ("2557", "NGC0224"),
        ("00h42m44.3s +41d16m09s", "NGC0224"),
        ("10.6848 41.2690", "NGC0224"),
    ],
)
def test_target_takes_a_positional_name_number_or_position(
    cli, worker: StandInWorker, argument: str, resolved: str
) -> None:
    result = cli("target", argument, "--timeout", "20", "--json")
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.stdout)
    assert answer["job"]["input"]["resolved"]["name"] == resolved


def test_target_with_two_targets_is_a_usage_error(cli) -> None:
    result = cli("target", "M33", "--name", "M31")
    assert result.exit_code == 2
    assert "exactly one target" in result.output


def test_unknown_name_says_did_you_mean_once(cli) -> None:
    result = cli("target", "Andromeda Galxy")
    assert result.exit_code == 3
    assert result.stderr.lower().count("did you mean") == 1, result.stderr
    assert "Andromeda Galaxy" in result.stderr


def test_cutout_failure_names_the_setting_and_suggests_an_upload(
    cli, worker: StandInWorker
) -> None:
    worker.fail_jobs = True
    worker.fail_with = CutoutUnavailable(
        "skyserver.sdss.org did not deliver an image: no answer within 10 s (tried 3 times)."
    )
    result = cli("target", "M33", "--timeout", "20")
    assert result.exit_code == 1, result.output
    hint = " ".join(result.stderr.split())
    assert "SKYSERVE_CUTOUT_TIMEOUT_SECONDS" in hint and "SKYSERVE_CUTOUT_PROVIDER" in hint
    assert "skyserve predict" in hint


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".vot", ".parquet"])
def test_predict_out_writes_a_real_table(
    cli, worker: StandInWorker, image: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"answers{suffix}"
    result = cli("predict", str(image), "--task", "inclination", "--out", str(out))
    assert result.exit_code == 0, result.output
    if suffix == ".fits":
        with fits.open(out) as hdul:  # a FITS binary table, never JSON in a .fits file
            assert isinstance(hdul[1], fits.BinTableHDU)
    fmt = {".fits": "fits", ".ecsv": "ascii.ecsv", ".vot": "votable", ".parquet": "parquet"}
    table = Table.read(out, format=fmt[suffix])
    assert list(table["task"]) == ["inclination"]
    assert table["value"][0] == pytest.approx(VALUE) and table["value"].dtype.kind == "f"
    assert str(table["unit"][0]) == "deg"


def test_a_non_ascii_file_name_still_makes_a_fits_table(
    cli, worker: StandInWorker, tmp_path: Path
) -> None:
    image = tmp_path / "galaxié ñ.png"  # FITS text is ASCII; the name must not crash it
    image.write_bytes(png_bytes(40, seed=2))
    out = tmp_path / "answers.fits"
    result = cli("predict", str(image), "--task", "inclination", "--out", str(out))
    assert result.exit_code == 0, result.output
    table = Table.read(out)
    assert table["input"][0].endswith("galaxie n.png")
    assert table["value"][0] == pytest.approx(VALUE)


def test_target_out_writes_fits_too(cli, worker: StandInWorker, tmp_path: Path) -> None:
    out = tmp_path / "m33.fits"
    assert cli("target", "M33", "--out", str(out)).exit_code == 0
    assert Table.read(out)["value"][0] == pytest.approx(VALUE)


def test_an_unknown_out_extension_is_refused_before_submitting(
    cli, image: Path, tmp_path: Path
) -> None:
    result = cli("predict", str(image), "--out", str(tmp_path / "answers.xlsx"))
    assert result.exit_code == 2 and "extension" in result.output
    assert not (tmp_path / "answers.xlsx").exists()


def _catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("id,name,ra\nA,M33,23.46\nB,M31,10.68\n")
    return path


@pytest.mark.parametrize(
    ("suffix", "reader"),
    [(".fits", "fits"), (".vot", "votable"), (".ecsv", "ascii.ecsv"), (".parquet", "parquet")],
)
def test_batch_out_format_follows_the_extension(
    cli, worker: StandInWorker, tmp_path: Path, suffix: str, reader: str
) -> None:
    out = tmp_path / f"results{suffix}"
    result = cli("batch", str(_catalog(tmp_path)), "--task", "inclination", "--out", str(out))
    assert result.exit_code == 0, result.output
    table = Table.read(out, format=reader)
    assert list(table["id"]) == ["A", "B"] and table["ra"].dtype.kind == "f"
    assert list(table["inclination"]) == pytest.approx([VALUE, VALUE])


def test_client_returns_an_astropy_table_and_a_dataframe(
    live_api: LiveServer, worker: StandInWorker, tmp_path: Path
) -> None:
    with SkyserveClient(live_api.url) as sky:
        batch = sky.submit_batch(_catalog(tmp_path), tasks="inclination")
        sky.wait_batch(batch.id, timeout=30, poll=0.1)
        table = sky.results_table(batch.id)
        frame = sky.results_dataframe(batch.id)
        fits_path = sky.download_batch_results(batch.id, "fits", dest=tmp_path / "r.fits")
    assert isinstance(table, Table) and str(table["inclination"].unit) == "deg"
    assert list(table["id"]) == ["A", "B"]
    assert list(frame["inclination"]) == pytest.approx([VALUE, VALUE])
    assert fits_path.suffix == ".fits"
    assert Table.read(io.BytesIO(fits_path.read_bytes()), format="fits")["ra"][0] == pytest.approx(23.46)
