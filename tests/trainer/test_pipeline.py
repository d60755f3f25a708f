"""A tiny real run end to end: render → train → tf2onnx → parity → evaluate → publish → read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("galsim")

from typer.testing import CliRunner  # noqa: E402

from services.trainer.cli import app  # noqa: E402
from services.trainer.export import onnx_predict, onnx_session  # noqa: E402
from services.trainer.synthetic import render_galaxy_png  # noqa: E402
from shared.ensemble import summarize  # noqa: E402
from shared.preprocessing import preprocess, tta_transform  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    result = CliRunner().invoke(
        app, ["inclination", "--tiny", "--models-dir", str(root), "--threads", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "published" in result.output
    return root


@pytest.mark.slow
def test_tiny_run_publishes_a_complete_verified_version(published: Path) -> None:
    reader = RegistryReader(published)
    manifest = reader.manifest("inclination")
    assert manifest.version == 1
    assert len(manifest.members) == 3
    assert manifest.input.size == 32 and manifest.input.channels == 3
    assert manifest.input.scaling == "unit" and manifest.input.input_name == "image"
    assert manifest.output.activation == "tanh_range"
    assert manifest.tta == ["identity", "rot90", "rot180", "rot270"]  # the CLI's default
    assert manifest.calibration is not None
    assert manifest.parity_max_abs_diff is not None and manifest.parity_max_abs_diff <= 1e-4
    assert {m.subset_seed for m in manifest.members} == {0, 1, 2}
    assert all(m.subset_fraction == pytest.approx(0.67, abs=0.01) for m in manifest.members)
    assert manifest.training["command"].startswith("skyserve-train inclination")
    assert "--seed 0" in manifest.training["command"]
    assert manifest.training["library_versions"]["tf2onnx"]
    for key in ("rms_deg", "mae_deg", "bias_m", "bias_b", "baseline_axis_ratio_rms_deg"):
        assert np.isfinite(manifest.metrics[key])
    folder = reader.version_dir("inclination", 1)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["members"]) == {m.name for m in manifest.members}
    for plot in ("pred_vs_true.png", "residuals.png"):
        assert (folder / plot).read_bytes()[:4] == b"\x89PNG"
    assert not list((published / "inclination").glob(".staging-*"))


@pytest.mark.slow
def test_published_members_serve_finite_answers_in_range(published: Path) -> None:
    reader = RegistryReader(published)
    manifest = reader.manifest("inclination")
    task = get_task_definition("inclination")
    x = np.stack([preprocess(render_galaxy_png(i, seed=i), manifest.input) for i in (50, 70, 88)])
    raw = {}
    for member in manifest.members:
        session = onnx_session(reader.member_path(manifest, member, verify=True), threads=1)
        out = np.stack([onnx_predict(session, tta_transform(x, t)) for t in manifest.tta])
        assert out.shape == (len(manifest.tta), 3, 1)
        assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)
        raw[member.name] = out
    for answer in summarize(task, manifest, raw):
        assert isinstance(answer.value, float) and 45.0 <= answer.value <= 90.0
        assert len(answer.members) == 3


def test_an_unknown_test_time_transform_is_refused_before_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inclination", "--tiny", "--models-dir", str(tmp_path),
                                      "--tta", "identity,rot45"])
    assert result.exit_code == 2 and "rot45" in result.output
    assert not (tmp_path / "inclination").exists()


def test_cli_help_and_architectures_list() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["inclination", "--help"])
    assert result.exit_code == 0 and "--tiny" in result.output
    result = runner.invoke(app, ["architectures"])
    assert result.exit_code == 0 and "model4" in result.output and "compact" in result.output


def test_module_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "services.trainer", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "inclination" in proc.stdout
