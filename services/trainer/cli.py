"""``skyserve-train``: build, check, publish and re-evaluate models from the command line.

``skyserve-train TASK`` runs the task's recipe file (``services/trainer/recipes/``)
as it is — that rebuilds the committed default — and every recipe file is a command,
with the same options: each one overrides a recipe field for this run and is recorded
in the manifest with the resolved recipe. ``--tiny`` runs the recipe's seconds-long
variant; ``--resume RUN_DIR`` finishes a run whose export, parity check or
evaluation failed, from its saved members. ``evaluate`` re-evaluates a published
version through the served path; ``republish`` publishes a version's members again as
a new version with today's calibration and metrics; ``catalog`` trains a task defined by a user's CSV;
``architectures`` lists the bodies. Heavy libraries load inside commands, so
``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.trainer.cli_catalog import catalog
from services.trainer.recipe import recipe_names

__all__ = ["app"]

app = typer.Typer(
    name="skyserve-train",
    help="Train, export (ONNX), evaluate and publish skyserve models.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

ModelsDir = Annotated[Path | None, typer.Option(help="Registry root (default: "
                                                "SKYSERVE_MODELS_DIR).")]
Threads = Annotated[int | None, typer.Option(help="TensorFlow/ONNX Runtime threads.")]
Workers = Annotated[int | None, typer.Option("--workers", "--render-workers",
                                             help="Processes building the data.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


@app.callback()
def main() -> None:
    """Train, export (ONNX), evaluate and publish skyserve models."""


def _setup(verbose: bool) -> Any:
    # TensorFlow's C++ start-up chatter hides the progress lines; keep its warnings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.trainer.settings import get_settings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices
    return get_settings()


def _say(message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


def _fail(exc: BaseException, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code)


def _value(text: str) -> Any:
    """A ``--data`` value: JSON when it parses (numbers, true, lists, tables), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _report(task: Any, result: Any) -> None:
    from services.trainer.manifest import headline_rows

    table = Table(title=f"{task.name} v{result.manifest.version} — "
                        f"{result.metrics.get('evaluated_on', 'test')} set, as served")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in headline_rows(task, result.metrics):
        table.add_row(name, value)
    console.print(table)
    console.print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))
    if result.loaded:
        console.print(f"members resumed without training: {', '.join(result.loaded)}")
    console.print(f"published to [bold]{result.version_dir}[/bold]")


def _recipe_command(task: str) -> Any:
    """The ``skyserve-train TASK`` command of one recipe file."""

    def command(
        members: Annotated[int | None, typer.Option(min=1, help="Ensemble members (bagged).")]
        = None,
        n_train: Annotated[int | None, typer.Option(min=1, help="Training examples.")] = None,
        n_val: Annotated[int | None, typer.Option(min=2, help="Validation examples.")] = None,
        n_test: Annotated[int | None, typer.Option(min=2, help="Test examples.")] = None,
        epochs: Annotated[int | None, typer.Option(min=1)] = None,
        architecture: Annotated[str | None, typer.Option(
            help="Body (skyserve-train architectures).")] = None,
        input_size: Annotated[int | None, typer.Option(help="Input side in px.")] = None,
        batch_size: Annotated[int | None, typer.Option(min=1)] = None,
        learning_rate: Annotated[float | None, typer.Option(min=0.0)] = None,
        patience: Annotated[int | None, typer.Option(min=1, help="Early-stopping patience.")]
        = None,
        tta: Annotated[str | None, typer.Option(help="Test-time transforms, comma-separated "
                                                "(identity, rot90, rot180, rot270, flip_lr, "
                                                "flip_ud).")] = None,
        mc_rate: Annotated[float | None, typer.Option(min=0.0, max=0.9, help="MC-dropout rate "
                                                      "(0: none).")] = None,
        mc_samples: Annotated[int | None, typer.Option(min=1, help="MC-dropout passes per "
                                                       "image and transform when serving.")]
        = None,
        steps_per_epoch: Annotated[int | None, typer.Option(help="Cap on steps per epoch.")]
        = None,
        data: Annotated[list[str] | None, typer.Option(
            help="A data-source parameter KEY=VALUE (repeat), e.g. volunteers=20, copies=6, "
                 "csv_path=FILE.")] = None,
        parity_tolerance: Annotated[float | None, typer.Option(min=0.0)] = None,
        seed: Annotated[int | None, typer.Option(help="Seeds data, subsets and weights.")]
        = None,
        imagenet_weights: Annotated[Path | None, typer.Option(
            help="Fine-tune ImageNet MobileNet v1 from this LOCAL .h5 file (nothing is "
                 "downloaded).")] = None,
        tiny: Annotated[bool, typer.Option("--tiny", help="The recipe's seconds-long variant "
                                           "(tiny net at 32 px, a few dozen images).")] = False,
        resume: Annotated[Path | None, typer.Option(
            help="Finish the run in this folder from its saved members.")] = None,
        models_dir: ModelsDir = None, threads: Threads = None, workers: Workers = None,
        backbone_cache: Annotated[Path | None, typer.Option(
            help="Pretrained bodies (default SKYSERVE_TRAINER_BACKBONE_DIR).")] = None,
        runs_dir: Annotated[Path | None, typer.Option(
            help="Where run folders go (default SKYSERVE_TRAINER_RUNS_DIR).")] = None,
        verbose: Verbose = False,
    ) -> None:
        settings = _setup(verbose)
        from services.trainer.export import ParityError
        from services.trainer.recipe import Recipe, load_recipe, merged, override
        from services.trainer.release import release
        from services.trainer.runs import RunFolder, new_run_dir
        from shared.taskdefs import get_task_definition

        given = {"members": members, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                 "epochs": epochs, "architecture": architecture, "input_size": input_size,
                 "batch_size": batch_size, "learning_rate": learning_rate, "patience": patience,
                 "mc_rate": mc_rate, "mc_samples": mc_samples,
                 "steps_per_epoch": steps_per_epoch, "parity_tolerance": parity_tolerance,
                 "seed": seed,
                 "tta": [t.strip() for t in tta.split(",") if t.strip()] if tta else None}
        spelled = ["skyserve-train", task] + (["--tiny"] if tiny else [])
        for key, value in {**given, "tta": tta}.items():
            if value is not None:
                spelled += [f"--{key.replace('_', '-')}", str(value)]
        for item in data or []:
            spelled += ["--data", item]
        if imagenet_weights is not None:
            spelled += ["--imagenet-weights", str(imagenet_weights)]
        command = shlex.join(spelled)
        console.print(f"[bold]{command}[/bold]")
        try:
            for item in data or []:
                key, sep, text = item.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"--data takes KEY=VALUE, not {item!r}.")
                given[key.strip()] = _value(text)
            changes = override(given)
            if imagenet_weights is not None:
                changes = merged(changes, {"backbone": "imagenet-mobilenet", "scaling": "symmetric",
                                           "backbone_file": str(imagenet_weights),
                                           "fit": {"architecture": "mobilenet"}})
            if resume is not None:
                stored = RunFolder(resume).stored_recipe()
                if stored is None:
                    raise ValueError(f"{resume} holds no run (no run.json).")
                if stored["task"] != task:
                    raise ValueError(f"{resume} holds a {stored['task']} run; resume it with "
                                     f"skyserve-train {stored['task']} --resume.")
                recipe = Recipe.model_validate(merged(stored, changes))
            else:
                recipe = load_recipe(task, tiny=tiny, overrides=changes)
            root = models_dir or settings.models_dir
            result = release(
                recipe, models_dir=root,
                run_dir=resume or new_run_dir(runs_dir or settings.trainer_runs_dir, task),
                threads=threads or settings.trainer_threads,
                workers=workers or (1 if tiny else settings.trainer_render_workers),
                command=command, backbone_cache=backbone_cache or settings.trainer_backbone_dir,
                say=_say)
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(exc) from exc
        except ParityError as exc:
            raise _fail(exc, 1) from exc
        _report(get_task_definition(task, Path(root)), result)

    command.__doc__ = f"Train, check, evaluate and publish {task} (recipes/{task}.toml)."
    return command


for _task in recipe_names():
    app.command(_task)(_recipe_command(_task))


@app.command("evaluate")
def evaluate_command(
    task: Annotated[str, typer.Argument(help="A published task.")],
    version: Annotated[int | None, typer.Argument(help="Its version (default: the latest).")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Write metrics.json and the plots here.")]
    = None,
    models_dir: ModelsDir = None, threads: Threads = None, workers: Workers = None,
    verbose: Verbose = False,
) -> None:
    """Re-evaluate a published version through the served path; compare with its manifest."""
    settings = _setup(verbose)
    from services.trainer.evaluate.published import reevaluate
    from services.trainer.manifest import write_json
    from shared.errors import SkyserveError

    with tempfile.TemporaryDirectory() as scratch:
        folder = out or Path(scratch)
        try:
            found = reevaluate(task, version, models_dir=models_dir or settings.models_dir,
                               folder=folder, threads=threads or settings.trainer_threads,
                               workers=workers or settings.trainer_render_workers)
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(exc) from exc
        except SkyserveError as exc:
            raise _fail(exc.detail) from exc  # type: ignore[arg-type]
        if out is not None:
            write_json(out / "metrics.json", found.metrics)
    table = Table(title=f"{task} v{found.manifest.version}: published vs re-evaluated as served")
    for column in ("metric", "published", "now", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, old, new in found.comparison():
        table.add_row(key, f"{old:.6g}", f"{new:.6g}", f"{new - old:+.2e}")
    console.print(table)
    for note in found.notes:
        console.print(f"[dim]{note}[/dim]")


@app.command("republish")
def republish_command(
    task: Annotated[str, typer.Argument(help="A published task.")],
    version: Annotated[int | None, typer.Argument(help="Its version (default: the latest).")]
    = None,
    models_dir: ModelsDir = None, threads: Threads = None, workers: Workers = None,
    verbose: Verbose = False,
) -> None:
    """Publish a version's members again as a new version: the calibration the release
    path fits on validation today (a regression's bias and error model) and the metrics
    it measures as served today. The published version itself is never edited."""
    settings = _setup(verbose)
    from services.trainer.evaluate.published import republish
    from shared.errors import SkyserveError
    from shared.taskdefs import get_task_definition

    root = models_dir or settings.models_dir
    command = "skyserve-train republish " + shlex.join(
        [task] + ([str(version)] if version is not None else []))
    console.print(f"[dim]{command}[/dim]")
    try:
        manifest, metrics = republish(task, version, models_dir=root, command=command,
                                        threads=threads or settings.trainer_threads,
                                        workers=workers or settings.trainer_render_workers)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    except SkyserveError as exc:
        raise _fail(exc.detail) from exc  # type: ignore[arg-type]
    from services.trainer.manifest import headline_rows

    table = Table(title=f"{task} v{manifest.version} — republished, as served")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in headline_rows(get_task_definition(task, root), metrics):
        table.add_row(name, value)
    console.print(table)
    console.print(f"published to [bold]{Path(root) / task / str(manifest.version)}[/bold]")


@app.command()
def architectures() -> None:
    """List the bodies the trainer can build (parameters and MFLOP with a regression head)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.trainer.model.bodies import ARCHITECTURES, flops_per_image
    from services.trainer.model.heads import build_member_models
    from shared.taskdefs import get_task_definition

    task = get_task_definition("inclination")
    table = Table(title="architectures (parameters and MFLOP per image with the regression head)")
    for column in ("name", "input", "parameters", "MFLOP", "layers", "description"):
        table.add_column(column, justify="right" if column in ("parameters", "MFLOP") else "left")
    for arch in ARCHITECTURES.values():
        model = build_member_models(arch, task, input_size=arch.input_size).export
        table.add_row(arch.name, f"{arch.input_size} px", f"{model.count_params():,}",
                      f"{flops_per_image(model) / 1e6:,.1f}", arch.layers, arch.description)
    console.print(table)


# skyserve-train catalog: a task defined by a user's CSV (services/trainer/cli_catalog.py).
app.command()(catalog)
