"""``skyserve-train rejection | morphology | object-type | catalog``: the non-inclination commands.

Each task command with no options rebuilds its committed default model (the recipe
in :mod:`services.trainer.recipes`); ``--tiny`` runs the same path in seconds.
``catalog`` trains a user-defined task from a CSV taken as it is, listing every row
it could not use. :func:`register` adds the commands to the ``skyserve-train`` app.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console()

Members = Annotated[int | None, typer.Option(min=1, help="Ensemble members (bagged, >= 3 "
                                             "for a default).")]
Epochs = Annotated[int | None, typer.Option(min=1, help="Epochs (fine-tuning: stage 2).")]
Arch = Annotated[str | None, typer.Option(help="Architecture (skyserve-train architectures).")]
InputSize = Annotated[int | None, typer.Option(help="Input side in px.")]
BatchSize = Annotated[int | None, typer.Option(min=1)]
LearningRate = Annotated[float | None, typer.Option(min=0.0)]
Steps = Annotated[int | None, typer.Option(help="Cap on steps per epoch (tests).")]
Seed = Annotated[int, typer.Option(help="Seeds data, subsets and weights.")]
ModelsDir = Annotated[Path | None, typer.Option(help="Registry root (default: "
                                                "SKYSERVE_MODELS_DIR).")]
Threads = Annotated[int | None, typer.Option(help="TensorFlow/ONNX Runtime threads.")]
Workers = Annotated[int | None, typer.Option(help="Rendering/decoding processes.")]
Tiny = Annotated[bool, typer.Option("--tiny", help="A seconds-long smoke run: tiny net at "
                                    "32 px, a few dozen images, 2 steps per epoch.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]
BackboneCache = Annotated[Path | None, typer.Option(help="Folder of pretrained bodies "
                                                    "(default SKYSERVE_TRAINER_BACKBONE_DIR, "
                                                    ".cache/backbones).")]


def _setup(verbose: bool) -> Any:
    # TensorFlow's C++ start-up chatter hides the progress lines; keep its warnings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.trainer.settings import get_settings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices
    return get_settings()


def _spelled(task: str, values: dict[str, Any]) -> str:
    """The command line that reproduces a run, every non-default option spelled out."""
    parts = ["skyserve-train", task]
    for key, value in values.items():
        if value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def _report(task_name: str, result: Any) -> None:
    from services.trainer.release import headline_rows
    from shared.taskdefs import get_task_definition

    task = get_task_definition(task_name, result.version_dir.parent.parent)
    table = Table(title=f"{task.name} v{result.manifest.version} — "
                        f"{result.metrics.get('evaluated_on', 'test')} set")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in headline_rows(task, result.metrics):
        table.add_row(name, value)
    console.print(table)
    console.print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))
    console.print(f"published to [bold]{result.version_dir}[/bold]")


def _run_recipe(task: str, values: dict[str, Any], *, tiny: bool, seed: int,
                models_dir: Path | None, threads: int | None, workers: int | None,
                verbose: bool, backbone_cache: Path | None = None,
                imagenet_weights: Path | None = None) -> None:
    settings = _setup(verbose)
    from services.trainer.recipes import recipe_for, run_recipe

    spelled = {**{k: v for k, v in values.items() if k != "data"},
               "csv": values.get("data", {}).get("csv_path"), "seed": seed if seed else None,
               "tiny": tiny}
    if imagenet_weights is not None:
        spelled["imagenet_weights"] = imagenet_weights
    command = _spelled(task, spelled)
    console.print(f"[bold]{command}[/bold]")
    try:
        recipe = recipe_for(task, tiny=tiny, **values)
        result = run_recipe(
            recipe, models_dir=models_dir or settings.models_dir, seed=seed,
            threads=threads or settings.trainer_threads,
            workers=workers or (1 if tiny else settings.trainer_render_workers),
            command=command, backbone_cache=backbone_cache or settings.trainer_backbone_dir,
            imagenet_weights=imagenet_weights,
            say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _report(task, result)


def rejection(
    members: Members = None, n_train: Annotated[int | None, typer.Option(min=1)] = None,
    n_val: Annotated[int | None, typer.Option(min=2)] = None,
    n_test: Annotated[int | None, typer.Option(min=2)] = None, epochs: Epochs = None,
    architecture: Arch = None, input_size: InputSize = None, batch_size: BatchSize = None,
    learning_rate: LearningRate = None, steps_per_epoch: Steps = None, seed: Seed = 0,
    models_dir: ModelsDir = None, threads: Threads = None, render_workers: Workers = None,
    backbone_cache: BackboneCache = None, tiny: Tiny = False, verbose: Verbose = False,
) -> None:
    """Train the rejection model (reject + five reasons) on synthetic scenes; publish it."""
    _run_recipe("rejection", {
        "members": members, "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "epochs": epochs, "architecture": architecture, "input_size": input_size,
        "batch_size": batch_size, "learning_rate": learning_rate,
        "steps_per_epoch": steps_per_epoch}, tiny=tiny, seed=seed, models_dir=models_dir,
        threads=threads, workers=render_workers, verbose=verbose, backbone_cache=backbone_cache)


def morphology(
    members: Members = None, n_train: Annotated[int | None, typer.Option(min=1)] = None,
    n_val: Annotated[int | None, typer.Option(min=2)] = None,
    n_test: Annotated[int | None, typer.Option(min=2)] = None, epochs: Epochs = None,
    architecture: Arch = None, input_size: InputSize = None, batch_size: BatchSize = None,
    learning_rate: LearningRate = None, steps_per_epoch: Steps = None,
    volunteers: Annotated[int | None, typer.Option(min=1, help="Simulated volunteers per "
                                                   "galaxy.")] = None,
    mc_samples: Annotated[int | None, typer.Option(min=1, help="MC-dropout passes per image "
                                                   "and transform when serving.")] = None,
    mc_rate: Annotated[float | None, typer.Option(min=0.0, max=0.9, help="MC-dropout rate "
                                                  "(0: none).")] = None,
    seed: Seed = 0, models_dir: ModelsDir = None, threads: Threads = None,
    render_workers: Workers = None, backbone_cache: BackboneCache = None, tiny: Tiny = False,
    verbose: Verbose = False,
) -> None:
    """Train the Galaxy Zoo-style morphology vote-tree model (Dirichlet-multinomial, MC dropout)."""
    _run_recipe("morphology", {
        "members": members, "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "epochs": epochs, "architecture": architecture, "input_size": input_size,
        "batch_size": batch_size, "learning_rate": learning_rate,
        "steps_per_epoch": steps_per_epoch, "volunteers": volunteers,
        "mc_samples": mc_samples, "mc_rate": mc_rate}, tiny=tiny, seed=seed,
        models_dir=models_dir, threads=threads, workers=render_workers, verbose=verbose,
        backbone_cache=backbone_cache)


def object_type(
    members: Members = None, epochs: Epochs = None, batch_size: BatchSize = None,
    copies: Annotated[int | None, typer.Option(min=0, help="Augmented colour+grey pairs per "
                                               "training photo.")] = None,
    steps_per_epoch: Steps = None, seed: Seed = 0,
    backbone_cache: BackboneCache = None,
    imagenet_weights: Annotated[Path | None, typer.Option(
        help="Fine-tune ImageNet MobileNet v1 from this LOCAL .h5 file instead of the "
             "morphology backbone (nothing is downloaded).")] = None,
    input_size: InputSize = None,
    csv: Annotated[Path | None, typer.Option(help="Labelled photo CSV (default "
                                             "SKYSERVE_DSO_CSV).")] = None,
    models_dir: ModelsDir = None, threads: Threads = None, workers: Workers = None,
    tiny: Tiny = False, verbose: Verbose = False,
) -> None:
    """Fine-tune the deep-sky object-type classifier on the Stellarium photos; report on val."""
    values: dict[str, Any] = {"members": members, "epochs": epochs, "batch_size": batch_size,
                              "copies": copies, "steps_per_epoch": steps_per_epoch,
                              "input_size": input_size}
    if csv is not None:
        values["data"] = {"csv_path": csv}
    _run_recipe("object-type", values, tiny=tiny, seed=seed, models_dir=models_dir,
                threads=threads, workers=workers, verbose=verbose,
                backbone_cache=backbone_cache, imagenet_weights=imagenet_weights)


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
    steps_per_epoch: Steps = None, seed: Seed = 0, models_dir: ModelsDir = None,
    threads: Threads = None, verbose: Verbose = False,
) -> None:
    """Train, evaluate and publish a task defined by a user's catalog CSV (Zoobot format too)."""
    settings = _setup(verbose)
    from dataclasses import replace

    from services.trainer.catalog import (
        CatalogSpec,
        read_catalog,
        split_indices,
        write_task_definition,
    )
    from services.trainer.fitting import FitConfig
    from services.trainer.release import ReleaseOptions, release, unusable_rows_csv
    from shared.registry import InputSpec
    from shared.taskdefs import VoteTreeSchema

    command = shlex.join(["skyserve-train", *sys.argv[1:]]) if sys.argv[1:2] == ["catalog"] \
        else f"skyserve-train catalog {catalog_csv} --task-name {task_name} ..."
    kinds = {"regression": "regression", "classification": "classification",
             "multilabel": "multilabel", "vote-tree": "vote_tree", "vote_tree": "vote_tree"}
    root = models_dir or settings.models_dir
    try:
        if kind not in kinds:
            raise ValueError(f"--kind must be one of regression, classification, multilabel, "
                             f"vote-tree; not {kind!r}.")
        tree = None
        if schema is not None:
            text = schema.read_text()
            import json

            body = json.loads(text)
            tree = VoteTreeSchema.model_validate(body.get("vote_tree", body))
        columns = tuple(c.strip() for item in (label_columns or []) for c in item.split(",")
                        if c.strip())
        spec = CatalogSpec(
            csv_path=catalog_csv, task_name=task_name, kind=kinds[kind],  # type: ignore[arg-type]
            id_column=id_column, image_column=image_column, label_columns=columns,
            value_range=value_range, schema=tree,
            classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
            images_root=images_root, unit=unit)
        input_spec = InputSpec(size=input_size, channels=3, scaling="unit")
        console.print(f"[bold]{command}[/bold]")
        found = read_catalog(spec, input_spec)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table(title=f"{len(found.unusable)} of {found.rows} rows not used")
    for column in ("row", "id", "reason"):
        table.add_column(column)
    for u in found.unusable:
        table.add_row(str(u.row), u.id, u.reason)
    console.print(table)
    task = found.task
    data = found.data
    train_i, val_i, test_i = split_indices(data.y, task.kind, seed=seed)
    if len(val_i) == 0 or len(test_i) == 0:
        console.print(f"[red]error:[/red] {len(data)} usable rows are too few to hold out a "
                      "validation and a test set (at least 3 needed).")
        raise typer.Exit(2)
    train, val, test = data.subset(train_i), data.subset(val_i), data.subset(test_i)
    test.description = {**test.description, "split": "test"}
    samples = mc_samples if mc_samples is not None else (5 if task.kind == "vote_tree" else 0)
    fit = FitConfig(architecture=architecture, members=members, epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                    steps_per_epoch=steps_per_epoch, mc_rate=0.2 if samples else 0.0,
                    mc_samples=max(1, samples))
    tuning = None
    if tune:
        from services.trainer.tuning import random_search

        console.print(f"[dim]random search: {tune} trials of up to {tune_epochs} epochs[/dim]")
        tuning = random_search(task, train.x, train.y, val.x, val.y, fit, trials=tune,
                               epochs=tune_epochs)
        fit = replace(fit, architecture=tuning.architecture.name,
                      learning_rate=tuning.learning_rate)
        console.print(f"[dim]best: {tuning.hyperparameters} → {tuning.architecture.layers}[/dim]")
    write_task_definition(root, task)
    description = {**data.description, "split_sizes": {"train": len(train), "val": len(val),
                                                       "test": len(test)},
                   "split": "stratified by class" if task.kind == "classification"
                   else "random", "unusable_rows": [u.as_dict() for u in found.unusable],
                   "tuning": tuning.describe() if tuning else None}
    options = ReleaseOptions(models_dir=root, fit=fit,
                             threads=threads or settings.trainer_threads, command=command,
                             parity_images=min(64, len(test)))
    try:
        result = release(task, train, val, test, options, data_description=description,
                         extra_files={"unusable_rows.csv": unusable_rows_csv(
                             [u.as_dict() for u in found.unusable])},
                         say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _report(task.name, result)


def register(app: typer.Typer) -> None:
    """Add the rejection, morphology, object-type and catalog commands to ``app``."""
    app.command()(rejection)
    app.command()(morphology)
    app.command("object-type")(object_type)
    app.command()(catalog)
