"""Every task kind end to end on tiny real data: train a few steps, export, parity, publish, serve.

Rejection and morphology render real synthetic scenes (GalSim), object type reads a
handful of the real Stellarium photos and fine-tunes from the morphology backbone
(rebuilt by its recipe when the cache lacks it). Each published version is then
loaded by a real worker ``SessionCache`` and answered by ``inference.predict``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from services.trainer import photos  # noqa: E402
from services.trainer.backbones import backbone_path  # noqa: E402
from services.trainer.fitting import unfreeze_top_blocks  # noqa: E402
from services.trainer.heads import build_member_models  # noqa: E402
from services.trainer.recipes import recipe_for, run_recipe  # noqa: E402
from services.trainer.release import check_member_parity  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402
from tests.helpers.requirements import require_path  # noqa: E402

SMALL = {"n_train": 48, "n_val": 16, "n_test": 16}


def _serve(root: Path, task: str, images: np.ndarray):  # type: ignore[no-untyped-def]
    from services.worker.inference import predict
    from services.worker.sessions import SessionCache

    cache = SessionCache(RegistryReader(root), providers=["CPUExecutionProvider"],
                         intra_op_threads=1)
    return predict(get_task_definition(task), cache.get(task), images, max_batch_size=32)


def _check_version(root: Path, task: str) -> dict:  # type: ignore[type-arg]
    manifest = RegistryReader(root).manifest(task)
    assert len(manifest.members) == 3
    assert manifest.parity_max_abs_diff is not None and manifest.parity_max_abs_diff <= 1e-4
    folder = root / task / str(manifest.version)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["plots"] and all((folder / p).is_file() for p in metrics["plots"])
    assert "failures.png" in metrics["plots"] and "reliability.png" in metrics["plots"]
    assert manifest.training["command"].startswith("skyserve-train")
    return metrics


@pytest.mark.slow
def test_morphology_vote_tree_with_mc_dropout_trains_exports_and_is_served(tmp_path: Path) -> None:
    root, cache = tmp_path / "models", tmp_path / "backbones"
    recipe = recipe_for("morphology", tiny=True, **SMALL)
    run_recipe(recipe, models_dir=root, threads=1, backbone_cache=cache,
               command="skyserve-train morphology --tiny")
    metrics = _check_version(root, "morphology")
    assert {"vote_fraction_mae", "vote_fraction_mae_expected", "nll"} <= set(metrics)
    assert "vote_fractions.png" in metrics["plots"]
    manifest = RegistryReader(root).manifest("morphology")
    assert manifest.output.activation == "dirichlet"
    mc = manifest.output.mc_dropout
    assert mc is not None and mc.samples == 5 and mc.units == 16
    assert backbone_path(cache, "morphology-tiny").is_file()  # saved for transfer learning
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    answers = _serve(root, "morphology", images)
    assert len(answers) == 3
    q = answers[0].questions["smooth-or-featured"]  # type: ignore[index]
    assert q.reached == 1.0 and sum(q.fractions.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(q.spread.values()) > 0  # members x MC samples disagree a little


@pytest.mark.slow
def test_rejection_multilabel_trains_exports_and_is_served(tmp_path: Path) -> None:
    root = tmp_path / "models"
    recipe = recipe_for("rejection", tiny=True, **SMALL)
    run_recipe(recipe, models_dir=root, threads=1, backbone_cache=tmp_path / "bb",
               command="skyserve-train rejection --tiny")
    metrics = _check_version(root, "rejection")
    assert {"accuracy", "precision", "recall"} <= set(metrics)
    assert set(metrics["labels"]) == set(get_task_definition("rejection").output_names)
    assert {"confusion.png", "labels.png"} <= set(metrics["plots"])
    answers = _serve(root, "rejection", np.zeros((2, 32, 32, 3), np.float32))
    assert 0.0 <= float(answers[0].value) <= 1.0  # type: ignore[arg-type]
    assert set(answers[0].probabilities) == set(metrics["labels"])  # type: ignore[arg-type]


@pytest.fixture
def few_photos(tmp_path: Path) -> Path:
    csv_file, folder = photos.catalog_paths()
    require_path(folder, package="stellarium-data")
    if not csv_file.is_file():
        pytest.skip(f"needs the labelled catalogue {csv_file}")
    with csv_file.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    picked = []
    for split, per_class in (("train", 2), ("val", 1)):
        for label in ("galaxy", "globular_cluster", "planetary_nebula"):
            picked += [r for r in rows if r["split"] == split and r["label"] == label][:per_class]
    path = tmp_path / "few.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(picked)
    return path


@pytest.mark.slow
def test_object_type_fine_tunes_from_a_rebuilt_backbone_and_is_served(
    tmp_path: Path, few_photos: Path
) -> None:
    root, cache = tmp_path / "models", tmp_path / "backbones"
    recipe = recipe_for("object-type", tiny=True, n_train=32, n_val=8, n_test=8,
                        data={"csv_path": few_photos})
    result = run_recipe(recipe, models_dir=root, threads=1, backbone_cache=cache,
                        command="skyserve-train object-type --tiny")
    assert backbone_path(cache, "morphology-tiny").is_file()  # rebuilt: the cache was empty
    metrics = _check_version(root, "object-type")
    assert {"accuracy", "macro_recall", "per_class_recall", "confusion", "class_weights"} <= set(
        metrics)
    assert metrics["evaluated_on"] == "val" and metrics["n_test"] == 6  # 3 photos x colour/grey
    assert "confusion.png" in metrics["plots"]
    training = result.manifest.training
    assert training["backbone"]["task"] == "morphology"
    assert training["hyperparameters"]["fine_tune"]["unfreeze_blocks"] == 1
    answers = _serve(root, "object-type", np.zeros((1, 32, 32, 3), np.float32))
    assert answers[0].value in get_task_definition("object-type").output_names
    assert sum(answers[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)  # type: ignore[union-attr]


def test_unfreezing_the_top_block_leaves_the_lower_blocks_frozen() -> None:
    models = build_member_models("lean", get_task_definition("object-type"), input_size=64)
    trainable = unfreeze_top_blocks(models.body, 1)
    assert trainable[:2] == ["conv7", "bn8"] and trainable[-2:] == ["dense10", "dense11"]
    frozen = [layer.name for layer in models.body.layers if layer.weights and not layer.trainable]
    assert frozen == ["conv0", "bn1", "conv2", "conv4", "bn5"]
    assert unfreeze_top_blocks(models.body, 0)[0] not in ("conv7", "bn8")


def test_parity_check_refuses_an_export_that_does_not_match(tmp_path: Path) -> None:
    from services.trainer.export import ParityError
    from services.trainer.fitting import FittedMember
    from services.trainer.release import export_member
    from shared.registry import InputSpec

    task = get_task_definition("morphology")
    models = build_member_models("tiny", task, input_size=32, mc_rate=0.3, mc_samples=2)
    member = FittedMember("tiny-0", models, "tiny", 1.0, 0, 0, 0, 0, 0.0, 0.0)
    spec = InputSpec(size=32)
    path = export_member(member, tmp_path / "m.onnx", spec)
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    assert check_member_parity(member, path, x, spec, tolerance=1e-4, threads=1) < 1e-4
    head = models.head.get_weights()
    models.head.set_weights([w + 0.5 for w in head])  # Keras moves on, the ONNX file does not
    with pytest.raises(ParityError, match="MC mask ones"):
        check_member_parity(member, path, x, spec, tolerance=1e-4, threads=1)
