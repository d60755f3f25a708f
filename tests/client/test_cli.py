"""The ``skyserve`` CLI against the real API over real HTTP: output and exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from services.client.cli import app
from tests.client.stand_in import StandInWorker
from tests.helpers.images import png_bytes
from tests.helpers.live_server import LiveServer, unused_url

pytestmark = pytest.mark.timeout(60)

COMMANDS = [
    "predict", "target", "batch", "batch-results", "job", "cancel", "tasks", "models", "ready",
]  # fmt: skip
VALUE_TEXT = "61.25 ± 1.75 deg"  # the stand-in worker's answer, as the table shows it


@pytest.fixture
def cli(live_api: LiveServer):  # type: ignore[no-untyped-def]
    """Run ``skyserve --url <live API> ARGS...`` and return the click result."""
    runner = CliRunner()

    def run(*args: str, url: str | None = live_api.url) -> Result:
        prefix = ["--url", url] if url else []
        return runner.invoke(app, [*prefix, *args], env={"COLUMNS": "200"})

    return run


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for n, size in enumerate((40, 48)):
        path = tmp_path / f"galaxy{n}.png"
        path.write_bytes(png_bytes(size, seed=n))
        paths.append(path)
    return paths


# -- help ----------------------------------------------------------------------------------------
def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for line in ("Exit codes", "0  success", "3  the API refused", "5  timed out"):
        assert line in result.stdout
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and f"skyserve {command}" in result.stdout


# -- predict -------------------------------------------------------------------------------------
def test_predict_prints_value_stdev_and_model_version(
    cli, images: list[Path], worker: StandInWorker
) -> None:
    result = cli("predict", str(images[0]), "--task", "inclination", "--timeout", "20")
    assert result.exit_code == 0, result.output
    assert VALUE_TEXT in result.stdout
    assert "galaxy0.png" in result.stdout and "v1" in result.stdout


def test_predict_several_images_one_job_each_as_json(
    cli, images: list[Path], worker: StandInWorker
) -> None:
    result = cli("predict", *map(str, images), "--json", "--timeout", "20")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [a["input"] for a in answers] == [str(p) for p in images]
    assert len({a["job"]["id"] for a in answers}) == 2
    for answer in answers:
        assert answer["job"]["status"] == "succeeded" and answer["error"] is None
        assert answer["job"]["result"]["tasks"]["inclination"]["value"] == 61.25


def test_predict_writes_csv_and_json_files(
    cli, images: list[Path], worker: StandInWorker, tmp_path: Path
) -> None:
    table = tmp_path / "answers.csv"
    assert cli("predict", *map(str, images), "--out", str(table)).exit_code == 0
    rows = list(csv.DictReader(table.open()))
    assert [(r["task"], r["value"], r["stdev"], r["model_version"]) for r in rows] == [
        ("inclination", "61.25", "1.75", "1")
    ] * 2
    as_json = tmp_path / "answers.json"
    assert cli("predict", str(images[0]), "--out", str(as_json)).exit_code == 0
    assert json.loads(as_json.read_text())[0]["job"]["status"] == "succeeded"


def test_predict_no_wait_prints_the_queued_job(cli, images: list[Path]) -> None:
    result = cli("predict", str(images[0]), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "queued" in result.stdout


def test_predict_unknown_task_exits_3_and_lists_served_tasks(cli, images: list[Path]) -> None:
    result = cli("predict", str(images[0]), "--task", "nope")
    assert result.exit_code == 3, result.output
    assert "Served tasks: inclination" in result.stderr
    assert "refused" in result.stdout


def test_predict_refuses_one_image_and_still_runs_the_others(
    cli, images: list[Path], worker: StandInWorker, tmp_path: Path
) -> None:
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    result = cli("predict", str(junk), str(images[0]), "--json")
    assert result.exit_code == 3
    first, second = json.loads(result.stdout)
    assert first["error"]["status"] == 415 and first["job"] is None
    assert second["job"]["status"] == "succeeded"


def test_predict_exits_1_when_a_job_fails(cli, images: list[Path], worker: StandInWorker) -> None:
    worker.fail_jobs = True
    result = cli("predict", str(images[0]), "--timeout", "20")
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout


def test_predict_exits_5_when_waiting_times_out(cli, images: list[Path]) -> None:
    result = cli("predict", str(images[0]), "--timeout", "0.5")
    assert result.exit_code == 5, result.output
    assert "skyserve job" in result.stderr


def test_usage_errors_exit_2(cli, images: list[Path], tmp_path: Path) -> None:
    assert cli("predict", str(tmp_path / "missing.png")).exit_code == 2
    assert cli("predict", str(images[0]), "--version", "inclination").exit_code == 2
    assert cli("target").exit_code == 2
    assert cli("target", "--name", "M33", "--pgc", "2557").exit_code == 2
    assert cli("target", "--ra", "10.5").exit_code == 2
    assert cli("frobnicate").exit_code == 2


def test_server_down_exits_4_with_a_hint(cli, images: list[Path]) -> None:
    url = unused_url()
    for args in (("tasks",), ("predict", str(images[0])), ("job", "0" * 32)):
        result = cli(*args, url=url)
        assert result.exit_code == 4, result.output
        assert url in result.stderr and "--url" in result.stderr


def test_url_and_key_from_the_environment(live_api: LiveServer) -> None:
    env = {"SKYSERVE_URL": live_api.url, "SKYSERVE_API_KEY": "k", "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["tasks"], env=env)
    assert result.exit_code == 0, result.output
    assert "inclination" in result.stdout


# -- job, cancel ---------------------------------------------------------------------------------
def _submit(cli, image: Path) -> str:  # type: ignore[no-untyped-def]
    result = cli("predict", str(image), "--no-wait", "--json")
    return json.loads(result.stdout)[0]["job"]["id"]


def test_job_shows_status_waits_and_exits_5_when_still_queued(cli, images: list[Path]) -> None:
    job_id = _submit(cli, images[0])
    shown = cli("job", job_id)
    assert shown.exit_code == 0 and "queued" in shown.stdout
    assert cli("job", job_id, "--wait", "0.3").exit_code == 5
    as_json = cli("job", job_id, "--json")
    assert json.loads(as_json.stdout)["id"] == job_id


def test_job_of_a_finished_job_shows_the_answer(
    cli, images: list[Path], worker: StandInWorker
) -> None:
    job_id = _submit(cli, images[0])
    result = cli("job", job_id, "--wait", "20")
    assert result.exit_code == 0, result.output
    assert VALUE_TEXT in result.stdout and "succeeded" in result.stdout


def test_unknown_job_exits_3(cli) -> None:
    result = cli("job", "0" * 32)
    assert result.exit_code == 3
    assert "0" * 32 in result.stderr


def test_cancel_then_cancelling_a_finished_job_exits_3(
    cli, images: list[Path], worker: StandInWorker
) -> None:
    worker.delay = 30.0  # keep this one queued
    job_id = _submit(cli, images[0])
    result = cli("cancel", job_id)
    assert result.exit_code == 0 and "cancelled" in result.stdout
    assert cli("job", job_id).exit_code == 1  # a cancelled job did not answer
    worker.delay = 0.0
    done = _submit(cli, images[1])
    assert cli("job", done, "--wait", "20").exit_code == 0
    refused = cli("cancel", done)
    assert refused.exit_code == 3 and "409" in refused.stderr


# -- catalogue and health ------------------------------------------------------------------------
def test_tasks_and_models_tables_and_json(cli) -> None:
    tasks = cli("tasks")
    assert tasks.exit_code == 0 and "inclination" in tasks.stdout and "v1" in tasks.stdout
    assert json.loads(cli("tasks", "--json").stdout)[0]["name"] == "inclination"
    models = cli("models")
    assert models.exit_code == 0 and "inclination" in models.stdout
    assert json.loads(cli("models", "--json").stdout)[0]["version"] == 1


def test_ready_exits_4_without_a_live_worker(cli) -> None:
    result = cli("ready")
    assert result.exit_code == 4
    assert "not ready" in result.stdout and "no live worker" in result.stdout
    assert json.loads(cli("ready", "--json").stdout)["ready"] is False


# -- targets -------------------------------------------------------------------------------------
def test_target_by_name_answers_and_unknown_name_exits_3(cli, worker: StandInWorker) -> None:
    result = cli("target", "--name", "M33", "--timeout", "20")
    assert result.exit_code == 0, result.output
    assert VALUE_TEXT in result.stdout and "M33" in result.stdout
    unknown = cli("target", "--name", "NGC 2244x")
    assert unknown.exit_code == 3 and "404" in unknown.stderr


# -- batches -------------------------------------------------------------------------------------
@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("id,name,note\nA,M33,keep\nB,NGC 224,\nC,NoSuchGalaxy,x\n")
    return path


def test_batch_follows_progress_downloads_and_failed_rows_exit_1(
    cli, catalog: Path, worker: StandInWorker, tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    result = cli("batch", str(catalog), "--task", "inclination", "--out", str(out), "--poll", "0.1")
    assert result.exit_code == 1, result.output  # one row failed: not a success
    assert "--allow-failures" in result.stderr
    assert "2 done" in result.stderr and "1 failed" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["id"], r["status"]) for r in rows] == [
        ("A", "succeeded"), ("B", "succeeded"), ("C", "failed"),
    ]  # fmt: skip
    assert rows[0]["note"] == "keep" and rows[0]["inclination"] == "61.25"
    strict = cli("batch", str(catalog), "--out", str(tmp_path / "r.json"), "--strict")
    assert strict.exit_code == 1, strict.output
    assert [r["id"] for r in json.loads((tmp_path / "r.json").read_text())] == ["A", "B", "C"]
    allowed = cli("batch", str(catalog), "--out", str(tmp_path / "a.csv"), "--allow-failures")
    assert allowed.exit_code == 0, allowed.output


def test_batch_no_wait_then_batch_results_and_timeouts(cli, catalog: Path, tmp_path: Path) -> None:
    submitted = cli("batch", str(catalog), "--no-wait")
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    assert len(batch_id) == 32 and "batch-results" in submitted.stderr
    waited = cli("batch-results", batch_id, "--timeout", "0.3", "--poll", "0.1")
    assert waited.exit_code == 5 and "batch-results" in waited.stderr
    so_far = tmp_path / "so-far.json"
    partial = cli("batch-results", batch_id, "--no-wait", "--out", str(so_far))
    assert partial.exit_code == 0, partial.output
    assert json.loads(so_far.read_text()) == []  # no worker: nothing done yet
    assert cli("cancel", batch_id, "--batch").exit_code == 0
    assert cli("batch-results", batch_id, "--out", str(so_far)).exit_code == 1  # cancelled


def test_batch_without_a_target_column_exits_3(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,colour\n1,red\n")
    result = cli("batch", str(bad))
    assert result.exit_code == 3
    assert "image_url" in result.stderr
