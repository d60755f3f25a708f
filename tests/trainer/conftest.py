"""Tiny real versions shared by the trainer tests: trained, exported, checked and published once.

``tiny_registry`` holds ``inclination`` v1 (a regression, through the real
``skyserve-train inclination --tiny`` command) and ``morphology`` v1 (a vote tree
with MC dropout, through :func:`services.trainer.release.release`), published by the
one release path every task takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyRegistry:
    root: Path  # the registry
    backbones: Path  # the backbone cache the morphology run saved its body into
    runs: Path  # where run folders went


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> TinyRegistry:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("galsim")
    from typer.testing import CliRunner

    from services.trainer.cli import app
    from services.trainer.recipe import load_recipe
    from services.trainer.release import release

    base = tmp_path_factory.mktemp("tiny")
    found = TinyRegistry(base / "models", base / "backbones", base / "runs")
    result = CliRunner().invoke(app, ["inclination", "--tiny", "--models-dir", str(found.root),
                                      "--threads", "2", "--runs-dir", str(found.runs)])
    assert result.exit_code == 0, result.output
    release(load_recipe("morphology", tiny=True), models_dir=found.root,
            run_dir=found.runs / "morphology", threads=2, backbone_cache=found.backbones,
            command="skyserve-train morphology --tiny")
    return found
