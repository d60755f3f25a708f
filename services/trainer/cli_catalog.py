"""``skyserve-train catalog``: train, evaluate and publish a task defined by a user's CSV.

The CSV is taken as it is (Zoobot's format too); every row that cannot be used is
listed with its reasons, printed and written to ``unusable_rows.csv`` in the version
folder. The task definition is written beside the versions; the rows are split
70/15/15 (stratified by class for classification) and released through the same
path as every default recipe (:func:`services.trainer.release.release`).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["catalog"]

console = Console()

KINDS = {"regression": "regression", "classification": "classification",
         "multilabel": "multilabel", "vote-tree": "vote_tree", "vote_tree": "vote_tree"}


def catalog(
    catalog_csv: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                help="The catalog CSV, as it is.")],
    task_name: Annotated[str, typer.Option(help="Name of the new task (a-z, 0-9, '-').")],
    kind: Annotated[str, typer.Option(help="regression | classification | multilabel | "
                                      "vote-tree")],
    id_column: Annotated[str, typer.Option(help="Column with a unique id per row.")] = "id_str",
    image_column: Annotated[str, typer.Option(help="Column with the image path or URL.")]
    = "file_loc",
    label_columns: Annotated[list[str] | None, typer.Option(
        help="Label column(s); repeat or comma-separate. Vote trees: defaults to the "
             "schema's question_answer columns.")] = None,
    value_range: Annotated[tuple[float, float] | None, typer.Option(
        "--range", help="Regression: the served range LO HI; rows outside are unusable.")]
    = None,
    schema: Annotated[Path | None, typer.Option(help="Vote tree: schema JSON (questions, "
                                                "answers, depends_on).")] = None,
    classes: Annotated[str | None, typer.Option(help="Classification: comma-separated class "
                                                "order (default: sorted).")] = None,
    images_root: Annotated[Path | None, typer.Option(help="Folder relative image paths are "
                                                     "under (default: the CSV's).")] = None,
    unit: Annotated[str | None, typer.Option(help="Regression unit, e.g. deg.")] = None,
    input_size: Annotated[int, typer.Option(min=16)] = 64,
    architecture: Annotated[str, typer.Option()] = "lean",
    members: Annotated[int, typer.Option(min=1)] = 3,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 2e-3,
    mc_samples: Annotated[int | None, typer.Option(min=0, help="MC-dropout passes (0: none; "
                                                   "default: 5 for vote trees, else 0).")]
    = None,
    tune: Annotated[int, typer.Option(min=0, help="Random-search trials (keras-tuner) "
                                      "before training; 0: none.")] = 0,
    tune_epochs: Annotated[int, typer.Option(min=1)] = 8,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Cap on steps per epoch.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds splits, subsets and weights.")] = 0,
    resume: Annotated[Path | None, typer.Option(
        help="Finish the run in this folder from its saved members.")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="Registry root (default: "
                                                    "SKYSERVE_MODELS_DIR).")] = None,
    threads: Annotated[int | None, typer.Option(help="TensorFlow/ONNX Runtime threads.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train, evaluate and publish a task defined by a user's catalog CSV (Zoobot format too)."""
    from services.trainer.cli import _fail, _report, _say, _setup

    settings = _setup(verbose)
    from services.trainer.data import Splits
    from services.trainer.data.catalog import (
        CatalogSpec,
        read_catalog,
        split_indices,
        write_task_definition,
    )
    from services.trainer.export import ParityError
    from services.trainer.fit import FitConfig
    from services.trainer.recipe import Checks, DataSpec, Recipe
    from services.trainer.release import release
    from services.trainer.runs import new_run_dir
    from shared.registry import InputSpec
    from shared.taskdefs import VoteTreeSchema

    command = shlex.join(["skyserve-train", *sys.argv[1:]]) if sys.argv[1:2] == ["catalog"] \
        else f"skyserve-train catalog {catalog_csv} --task-name {task_name} ..."
    root = models_dir or settings.models_dir
    try:
        if kind not in KINDS:
            raise ValueError(f"--kind must be one of regression, classification, multilabel, "
                             f"vote-tree; not {kind!r}.")
        tree = None
        if schema is not None:
            body = json.loads(schema.read_text())
            tree = VoteTreeSchema.model_validate(body.get("vote_tree", body))
        columns = tuple(c.strip() for item in (label_columns or []) for c in item.split(",")
                        if c.strip())
        spec = CatalogSpec(
            csv_path=catalog_csv, task_name=task_name, kind=KINDS[kind],  # type: ignore[arg-type]
            id_column=id_column, image_column=image_column, label_columns=columns,
            value_range=value_range, schema=tree,
            classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
            images_root=images_root, unit=unit)
        console.print(f"[bold]{command}[/bold]")
        found = read_catalog(spec, InputSpec(size=input_size, channels=3, scaling="unit"))
    except ValueError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"{len(found.unusable)} of {found.rows} rows not used")
    for column in ("row", "id", "reason"):
        table.add_column(column)
    for u in found.unusable:
        table.add_row(str(u.row), u.id, u.reason)
    console.print(table)
    task, data = found.task, found.data
    train_i, val_i, test_i = split_indices(data.y, task.kind, seed=seed)
    if len(val_i) == 0 or len(test_i) == 0:
        raise _fail(ValueError(f"{len(data)} usable rows are too few to hold out a validation "
                               "and a test set (at least 3 needed)."))
    train, val, test = data.subset(train_i), data.subset(val_i), data.subset(test_i)
    unusable = [u.as_dict() for u in found.unusable]
    train.description = {**train.description, "split": "train", "unusable_rows": unusable}
    val.description = {**val.description, "split": "val"}
    test.description = {**test.description, "split": "test"}
    samples = mc_samples if mc_samples is not None else (5 if task.kind == "vote_tree" else 0)
    fit = FitConfig(architecture=architecture, members=members, epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate,
                    steps_per_epoch=steps_per_epoch, mc_rate=0.2 if samples else 0.0,
                    mc_samples=max(1, samples))
    tuning = None
    if tune:
        from services.trainer.model.tuning import random_search

        _say(f"random search: {tune} trials of up to {tune_epochs} epochs")
        tuning = random_search(task, train.x, train.y, val.x, val.y, fit, seed=seed,
                               trials=tune, epochs=tune_epochs)
        fit = fit.model_copy(update={"architecture": tuning.architecture.name,
                                     "learning_rate": tuning.learning_rate})
        _say(f"best: {tuning.hyperparameters} → {tuning.architecture.layers}")
    write_task_definition(root, task)
    recipe = Recipe(task=task.name, description=task.description, seed=seed,
                    input_size=input_size, fit=fit, tta=["identity", "rot180"],
                    data=DataSpec(source="catalog", params=data.description),
                    checks=Checks(parity_images=min(64, len(test))))
    description = {"split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
                   "split": "stratified by class" if task.kind == "classification" else "random",
                   "tuning": tuning.describe() if tuning else None}
    try:
        result = release(recipe, models_dir=root, task=task,
                         run_dir=resume or new_run_dir(settings.trainer_runs_dir, task.name),
                         splits=Splits(train, val, test), describe=description,
                         threads=threads or settings.trainer_threads, command=command,
                         say=_say)
    except ValueError as exc:
        raise _fail(exc) from exc
    except ParityError as exc:
        raise _fail(exc, 1) from exc
    _report(task, result)
