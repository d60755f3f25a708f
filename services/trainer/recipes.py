"""The default recipes of the rejection, morphology and object-type models.

A recipe is the data (synthetic scenes from :mod:`services.trainer.scenes`, real
photos from :mod:`services.trainer.photos`) plus the training options that build a
committed default model; ``skyserve-train <task>`` with no options runs it, and
``--tiny`` runs a seconds-long version of the same path for tests.

- rejection: multilabel (``reject`` + five reasons) on synthetic scenes;
- morphology: Galaxy Zoo vote tree on synthetic scenes with simulated volunteers,
  Dirichlet-multinomial loss, MC dropout; its body is saved as the backbone;
- object-type: real Stellarium photos, fine-tuned from the morphology backbone
  (head first, body frozen; then the top block with a lower learning rate), class
  weights against the imbalance, evaluated on the catalogue's ``val`` split.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.trainer.architectures import get_architecture
from services.trainer.fitting import FineTune, FitConfig
from services.trainer.labelled import LabelledSet
from shared.registry import InputSpec

__all__ = ["Recipe", "RECIPES", "TINY", "recipe_for", "build_data", "run_recipe",
           "rebuild_backbone"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Data sizes and training options of one default model."""

    task: str
    fit: FitConfig
    input_size: int = 64
    n_train: int = 4000
    n_val: int = 800
    n_test: int = 1000
    tta: tuple[str, ...] = ("identity", "rot180")
    volunteers: int = 40  # morphology: simulated volunteers per galaxy
    copies: int = 3  # object-type: augmented colour+grey pairs per training photo
    backbone: str | None = None  # fine-tune from this task's saved body
    save_backbone: bool = False  # save member 0's body for transfer learning
    data: dict[str, Any] = field(default_factory=dict)  # object-type: csv_path, photo_dir


RECIPES: dict[str, Recipe] = {
    "rejection": Recipe(
        task="rejection",
        fit=FitConfig(architecture="lean", members=3, epochs=30, batch_size=64,
                      learning_rate=2e-3, patience=6),
        n_train=10000, n_val=1000, n_test=1000, save_backbone=True,
    ),
    "morphology": Recipe(
        task="morphology",
        # 30 epochs, the cosine decay run to its end: one member went from vote-fraction
        # MAE 0.158 (12 epochs) to 0.141; a wider full-resolution body gained nothing.
        fit=FitConfig(architecture="lean", members=3, epochs=30, batch_size=32,
                      learning_rate=3e-3, patience=6, mc_rate=0.1, mc_samples=5),
        n_train=5000, n_val=800, n_test=1000, save_backbone=True,
    ),
    "object-type": Recipe(
        task="object-type",
        fit=FitConfig(architecture="lean", members=3, batch_size=32, early_stopping=False,
                      fine_tune=FineTune(head_epochs=8, head_learning_rate=3e-3,
                                         unfreeze_blocks=2, epochs=30, learning_rate=5e-4)),
        copies=6, backbone="morphology", tta=("identity", "rot180", "flip_lr"),
    ),
}

# Seconds-long variants: the same code path on a tiny net at 32 px.
TINY: dict[str, Any] = {"input_size": 32, "n_train": 96, "n_val": 32, "n_test": 32,
                        "volunteers": 12, "copies": 0}
TINY_FIT: dict[str, Any] = {"architecture": "tiny", "epochs": 1, "steps_per_epoch": 2,
                            "batch_size": 16}


def recipe_for(task: str, *, tiny: bool = False, **overrides: Any) -> Recipe:
    """The recipe of ``task``, optionally tiny, with ``overrides`` (recipe or fit fields).

    Raises
    ------
    ValueError
        If ``task`` has no recipe or an override names no field.
    """
    if task not in RECIPES:
        raise ValueError(f"No default recipe for {task!r}; recipes exist for {', '.join(RECIPES)}.")
    recipe = RECIPES[task]
    fit_fields = set(FitConfig.__dataclass_fields__)
    recipe_fields = set(Recipe.__dataclass_fields__)
    unknown = set(overrides) - fit_fields - recipe_fields
    if unknown:
        raise ValueError(f"Unknown recipe option(s): {', '.join(sorted(unknown))}.")
    fit_over = {k: v for k, v in overrides.items() if k in fit_fields and v is not None}
    rec_over = {k: v for k, v in overrides.items() if k in recipe_fields and v is not None}
    if tiny:
        fit_over = {**TINY_FIT, **fit_over}
        if recipe.fit.fine_tune is not None:
            fit_over.setdefault("fine_tune", FineTune(head_epochs=1, epochs=1))
        rec_over = {**TINY, **rec_over}
    return replace(recipe, fit=replace(recipe.fit, **fit_over), **rec_over)


def _seeds(seed: int) -> dict[str, int]:
    # Far apart so that train, validation and test never share an example seed.
    return {"train": seed, "val": seed + 1_000_003, "test": seed + 2_000_006}


def build_data(recipe: Recipe, *, seed: int, workers: int,
               scaling: str = "unit") -> tuple[LabelledSet, LabelledSet | None, LabelledSet]:
    """Train, validation and test sets of a recipe (validation None: none is used).

    Object type has no test split of its own: its ``val`` photos are the
    evaluation set, and members train a fixed schedule without looking at them.
    """
    spec = InputSpec(size=recipe.input_size, channels=3, scaling=scaling)  # type: ignore[arg-type]
    seeds = _seeds(seed)
    if recipe.task == "rejection":
        from services.trainer.scenes import rejection_dataset

        make = lambda n, s: rejection_dataset(n, seed=s, spec=spec, workers=workers)  # noqa: E731
    elif recipe.task == "morphology":
        from services.trainer.scenes import morphology_dataset

        make = lambda n, s: morphology_dataset(  # noqa: E731
            n, seed=s, spec=spec, volunteers=recipe.volunteers, workers=workers)
    elif recipe.task == "object-type":
        from services.trainer.photos import object_type_dataset

        train = object_type_dataset("train", spec=spec, seed=seed, copies=recipe.copies,
                                    workers=workers, **recipe.data)
        val = object_type_dataset("val", spec=spec, seed=seed, copies=0, workers=workers,
                                  **recipe.data)
        return train, None, val
    else:
        raise ValueError(f"No data builder for {recipe.task!r}.")
    train = make(recipe.n_train, seeds["train"])
    val = make(recipe.n_val, seeds["val"])
    test = make(recipe.n_test, seeds["test"])
    test.description = {**test.description, "split": "test"}
    return train, val, test


def _backbone_name(task: str, recipe: Recipe) -> str:
    return task if recipe.fit.architecture != "tiny" else f"{task}-tiny"


def rebuild_backbone(task: str, path: Path, *, tiny: bool, seed: int, threads: int,
                     workers: int, say: Callable[[str], None] = log.info) -> None:
    """Retrain member 0 of ``task``'s recipe exactly as the default run does; save its body.

    Nothing is published: the version goes to a temporary registry that is deleted.
    """
    from services.trainer.release import ReleaseOptions, release
    from shared.taskdefs import get_task_definition

    recipe = recipe_for(task, tiny=tiny)
    recipe = replace(recipe, fit=replace(recipe.fit, members=1))
    train, val, test = build_data(recipe, seed=seed, workers=workers)
    with tempfile.TemporaryDirectory() as scratch:
        release(get_task_definition(task), train, val, test,
                ReleaseOptions(models_dir=Path(scratch), fit=replace(recipe.fit, seed=seed),
                               tta=recipe.tta, threads=threads, backbone_out=Path(path),
                               command=f"rebuild_backbone({task!r}, tiny={tiny}, seed={seed})"),
                say=say)


def run_recipe(
    recipe: Recipe,
    *,
    models_dir: Path,
    seed: int = 0,
    threads: int = 2,
    workers: int = 1,
    command: str = "",
    backbone_cache: Path | None = None,
    imagenet_weights: Path | None = None,
    say: Callable[[str], None] = log.info,
) -> Any:
    """Build the data, train, export, evaluate and publish one recipe.

    Returns the :class:`services.trainer.release.ReleaseResult`.
    """
    import time

    from services.trainer.backbones import (
        DEFAULT_CACHE,
        backbone_path,
        ensure_backbone,
        load_backbone,
        mobilenet_backbone,
    )
    from services.trainer.release import ReleaseOptions, release
    from shared.taskdefs import get_task_definition

    task = get_task_definition(recipe.task)
    cache = Path(backbone_cache or DEFAULT_CACHE)
    factory, source, scaling = None, None, "unit"
    if imagenet_weights is not None:
        factory, source = mobilenet_backbone(imagenet_weights, input_size=recipe.input_size)
        scaling = "symmetric"
        recipe = replace(recipe, fit=replace(recipe.fit, architecture="mobilenet"))
    elif recipe.backbone:
        tiny = recipe.fit.architecture == "tiny"
        name = _backbone_name(recipe.backbone, recipe)
        path = ensure_backbone(name, cache, say=say, rebuild=lambda p: rebuild_backbone(
            recipe.backbone or "", p, tiny=tiny, seed=seed, threads=threads, workers=workers,
            say=say))
        factory, source = load_backbone(path)
        wanted = (recipe.fit.architecture, get_architecture(recipe.fit.architecture).layers,
                  recipe.input_size)
        if (source["architecture"], source.get("layers"), source["input_size"]) != wanted:
            raise ValueError(f"Backbone {path} is a {source['architecture']} body "
                             f"({source.get('layers')}) at {source['input_size']} px; this "
                             f"recipe needs {wanted[0]} ({wanted[1]}) at {wanted[2]} px. "
                             "Delete it to have it rebuilt, or point --backbone-cache elsewhere.")
    started = time.perf_counter()
    say(f"building the {recipe.task} data ({recipe.n_train}/{recipe.n_val}/{recipe.n_test} "
        f"at {recipe.input_size} px, {workers} process(es))" if recipe.task != "object-type"
        else f"reading the object-type photos ({recipe.copies} augmented copies per training "
             f"photo, {recipe.input_size} px)")
    train, val, test = build_data(recipe, seed=seed, workers=workers, scaling=scaling)
    data_seconds = time.perf_counter() - started
    say(f"data ready in {data_seconds:.0f} s: {len(train)} train, "
        f"{len(val) if val is not None else 0} val, {len(test)} test")
    extra: dict[str, bytes] = {}
    unusable = train.description.get("unusable_rows", []) + test.description.get(
        "unusable_rows", [])
    if unusable:
        from services.trainer.release import unusable_rows_csv

        extra["unusable_rows.csv"] = unusable_rows_csv(
            [{"row": u.get("line", u.get("row")), "id": u.get("file", u.get("id")),
              "reason": u["reason"]} for u in unusable])
    options = ReleaseOptions(
        models_dir=Path(models_dir), fit=replace(recipe.fit, seed=seed), tta=recipe.tta,
        threads=threads, command=command,
        backbone_out=backbone_path(cache, _backbone_name(recipe.task, recipe))
        if recipe.save_backbone else None,
        backbone_source=source,
    )
    description = {"train": train.description, "val": val.description if val else None,
                   "test": test.description, "seeds": _seeds(seed),
                   "data_seconds": round(data_seconds, 1)}
    expected = None
    if recipe.task == "morphology":
        import numpy as np

        from services.trainer.scenes import answer_probabilities

        def _expected(truth: dict[str, Any]) -> np.ndarray:
            probs = answer_probabilities(truth)
            parts = [np.clip(probs[q.name], 0.0, None) for q in task.vote_tree.questions]  # type: ignore[union-attr]
            return np.concatenate([p / p.sum() for p in parts])

        expected = np.array([_expected(t) for t in test.truth])
    result = release(task, train, val, test, options, backbone=factory, extra_files=extra,
                     data_description=description, expected=expected, say=say)
    result.timings["data_s"] = data_seconds
    return result
