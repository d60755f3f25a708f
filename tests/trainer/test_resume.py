"""A late failure keeps the trained members; ``--resume`` publishes from them without training.

The failure is real: a parity tolerance of 0 asks ONNX Runtime to reproduce Keras to
the last bit, which float32 kernels never do, so the export check refuses to publish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("galsim")

from typer.testing import CliRunner  # noqa: E402

from services.trainer.cli import app  # noqa: E402
from services.trainer.export import ParityError  # noqa: E402
from services.trainer.recipe import load_recipe  # noqa: E402
from services.trainer.release import member_names, release  # noqa: E402
from services.trainer.runs import RunFolder  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402

SMALL = {"n_train": 48, "n_val": 16, "n_test": 16}


@pytest.mark.slow
def test_a_failed_run_keeps_its_members_and_resumes_without_training(tmp_path: Path) -> None:
    root, run_dir = tmp_path / "models", tmp_path / "run"
    strict = load_recipe("rejection", tiny=True,
                         overrides={"data": SMALL, "checks": {"parity_tolerance": 0.0}})
    with pytest.raises(ParityError, match="not publishing"):
        release(strict, models_dir=root, run_dir=run_dir, threads=2, backbone_cache=tmp_path,
                command="skyserve-train rejection --tiny --parity-tolerance 0.0")
    assert RegistryReader(root).versions("rejection") == []
    assert not [p for p in (root / "rejection").iterdir()]  # no staging, no claimed number
    run = RunFolder(run_dir)
    assert run.missing(member_names(strict)) == []  # every member kept
    trained = {name: json.loads((run_dir / "members" / f"{name}.json").read_text())
               for name in member_names(strict)}

    runner = CliRunner()
    common = ["--models-dir", str(root), "--threads", "2", "--workers", "1",
              "--backbone-cache", str(tmp_path / "bb")]
    refused = runner.invoke(app, ["rejection", "--resume", str(run_dir), "--epochs", "3",
                                  *common])
    assert refused.exit_code == 2 and "differs in fit" in refused.output

    resumed = runner.invoke(app, ["rejection", "--resume", str(run_dir),
                                  "--parity-tolerance", "0.0001", *common])
    assert resumed.exit_code == 0, resumed.output
    assert ("members resumed without training: " + ", ".join(member_names(strict))
            in resumed.output.replace("\n", " "))
    manifest = RegistryReader(root).manifest("rejection")
    assert manifest.version == 1
    assert manifest.parity_max_abs_diff is not None and 0 < manifest.parity_max_abs_diff <= 1e-4
    for member in manifest.members:  # the saved members, not new ones
        assert member.metrics["train_seconds"] == round(trained[member.name]["train_seconds"], 1)
        assert member.metrics["val_loss"] == round(trained[member.name]["val_loss"], 5)
    training = manifest.training
    assert training["command"] == "skyserve-train rejection --tiny --parity-tolerance 0.0"
    assert len(training["resumed"]) == 1  # the refused attempt changed nothing
    assert training["recipe"]["checks"]["parity_tolerance"] == 1e-4
    assert training["data"]["n_train"] == 48
    assert not run_dir.exists()  # published: the run folder is gone
