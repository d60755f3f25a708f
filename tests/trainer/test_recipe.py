"""Recipes are data: one file per default task, and with no options they rebuild what is committed.

Every committed default's manifest records how it was trained; the task's recipe file
must give exactly those hyper-parameters, sizes, transforms and checks, so that
``skyserve-train <task>`` rebuilds it. Options override recipe fields by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

pytest.importorskip("galsim")  # recipes of synthetic sources validate with their source

from services.trainer.data import split_seeds
from services.trainer.fit import FitConfig
from services.trainer.recipe import RECIPES_DIR, load_recipe, override, recipe_names
from shared.registry import RegistryReader
from shared.settings import REPO_ROOT
from shared.taskdefs import load_task_definitions

COMMITTED = RegistryReader(REPO_ROOT / "models")
FIT_KEYS = ("architecture", "members", "subset_fraction", "epochs", "batch_size",
            "learning_rate", "weight_decay", "patience", "steps_per_epoch", "augment",
            "mc_rate", "mc_samples", "fine_tune", "seed")


def test_every_default_task_has_a_recipe_file_and_nothing_else_does() -> None:
    assert recipe_names() == sorted(load_task_definitions())
    for task in recipe_names():
        for tiny in (False, True):
            recipe = load_recipe(task, tiny=tiny)
            assert recipe.task == task and recipe.variant == ("tiny" if tiny else "default")
    tiny = load_recipe("morphology", tiny=True)
    assert (tiny.input_size, tiny.fit.architecture) == (32, "tiny")
    assert tiny.data.params["volunteers"] == 12


@pytest.mark.parametrize("task", COMMITTED.tasks())
def test_the_default_recipe_rebuilds_the_committed_version(task: str) -> None:
    manifest = COMMITTED.manifest(task)
    training = manifest.training
    recipe = load_recipe(task)
    fit = {**recipe.fit.model_dump(mode="json"), "seed": recipe.seed}
    recorded = training["hyperparameters"]
    assert fit["seed"] == recorded["seed"]
    for key in FIT_KEYS[:-1]:  # older manifests leave out what they did not use (MC dropout)
        assert fit[key] == recorded.get(key, FitConfig.model_fields[key].default), key
    early = recorded["early_stopping"]
    assert recipe.fit.early_stopping == early.startswith("val_loss"), early
    if recipe.fit.early_stopping:
        assert f"patience {recipe.fit.patience}" in early
    assert recipe.input_size == manifest.input.size and recipe.scaling == manifest.input.scaling
    assert recipe.tta == manifest.tta
    assert (recipe.fit.mc_samples if recipe.fit.mc_rate else None) == (
        manifest.output.mc_dropout.samples if manifest.output.mc_dropout else None)
    data = training["data"]
    assert data["seeds"] == split_seeds(recipe.seed)
    for split in ("train", "val", "test"):
        wanted = recipe.data.sizes[split]
        if wanted is not None:  # sources with fixed splits (the photos) take the CSV's
            assert data[f"n_{split}"] == wanted, split
    described = data["train"] if isinstance(data.get("train"), dict) else {}
    for key, value in recipe.data.params.items():
        if key in described and value is not None:  # None: the environment's default
            assert described[key] == value, key
    assert recipe.checks.parity_images == training["evaluation"]["parity_images"]
    assert recipe.checks.parity_tolerance == training["evaluation"]["parity_tolerance"]
    if manifest.output.activation == "tanh_range":  # a regression: error model always
        assert manifest.calibration is not None and manifest.calibration.error_floor is not None
        corrected = (manifest.calibration.bias_m, manifest.calibration.bias_b) != (0.0, 0.0)
        assert corrected == (manifest.metrics.get("bias_correction") == "kept")
        if not recipe.checks.bias_correction:
            assert not corrected
    backbone = training.get("backbone")
    assert recipe.backbone == (backbone["task"] if backbone else None)


def test_options_override_recipe_fit_data_and_source_fields_by_name() -> None:
    changes = override({"epochs": 3, "n_train": 10, "volunteers": 5, "parity_tolerance": 0.0,
                        "tta": ["identity"], "seed": None})
    assert changes == {"fit": {"epochs": 3}, "data": {"n_train": 10, "params": {"volunteers": 5}},
                       "checks": {"parity_tolerance": 0.0}, "tta": ["identity"]}
    recipe = load_recipe("morphology", overrides=changes)
    assert (recipe.fit.epochs, recipe.data.n_train, recipe.data.params["volunteers"]) == (3, 10, 5)
    assert recipe.fit.mc_samples == 5  # untouched fields keep the file's value


@pytest.mark.parametrize(("task", "changes", "message"), [
    ("rejection", {"copies": 3}, "copies"),  # a parameter of another source
    ("inclination", {"tta": ["identity", "rot45"]}, "rot45"),
    ("inclination", {"architecture": None, "epochs": 0}, "epochs"),
])
def test_bad_overrides_are_refused_with_the_field_named(task: str, changes: dict,  # type: ignore[type-arg]
                                                        message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_recipe(task, overrides=override(changes))


def test_an_unknown_task_or_source_is_refused() -> None:
    with pytest.raises(ValueError, match="No default recipe for 'spirals'"):
        load_recipe("spirals")
    with pytest.raises(ValueError, match="Unknown data source 'hubble'"):
        load_recipe("inclination", overrides={"data": {"source": "hubble"}})


def test_no_trainer_module_branches_on_a_task_name() -> None:
    names = "|".join(re.escape(n) for n in load_task_definitions())
    branch = re.compile(rf"""(==|!=|\bin\b)\s*[(\[{{]?\s*["']({names})["']""")
    found = [f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}"
             for path in sorted((REPO_ROOT / "services" / "trainer").rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, found


def test_recipe_files_are_the_only_place_defaults_live() -> None:
    assert sorted(p.name for p in Path(RECIPES_DIR).iterdir()) == [
        f"{t}.toml" for t in recipe_names()]
