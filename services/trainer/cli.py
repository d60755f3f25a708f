"""``skyserve-train``: build, check and publish models from the command line.

``skyserve-train inclination`` with its defaults rebuilds the committed default
model (``models/inclination/2``); ``--tiny`` runs the whole pipeline in seconds on
a few hundred small images, for smoke tests. ``rejection``, ``morphology``,
``object-type`` and ``catalog`` come from :mod:`services.trainer.cli_tasks`. Heavy
libraries load inside commands, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.trainer.cli_tasks import register as register_task_commands

__all__ = ["app"]

app = typer.Typer(
    name="skyserve-train",
    help="Train, export (ONNX), evaluate and publish skyserve models.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

TINY = {"architecture": "tiny", "members": 3, "n_train": 200, "n_val": 60, "n_test": 60,
        "epochs": 2, "steps_per_epoch": 3, "input_size": 32, "render_workers": 1}


@app.callback()
def main() -> None:
    """Train, export (ONNX), evaluate and publish skyserve models."""


def _command(values: dict[str, object]) -> str:
    """The exact command line that reproduces a run (every option spelled out)."""
    parts = ["skyserve-train", "inclination"]
    for key, value in values.items():
        if value is None:
            continue
        parts += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(parts)


@app.command()
def inclination(
    members: Annotated[int, typer.Option(min=1, help="Ensemble members (bagged).")] = 3,
    n_train: Annotated[int, typer.Option(min=1, help="Training galaxies rendered.")] = 24000,
    n_val: Annotated[int, typer.Option(min=2, help="Validation galaxies (early stopping, "
                                       "bias fit).")] = 1000,
    n_test: Annotated[int, typer.Option(min=2, help="Held-out test galaxies.")] = 1500,
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    architecture: Annotated[str, typer.Option(help="compact, model4, model5, model6, tiny.")]
    = "compact",
    input_size: Annotated[int | None, typer.Option(help="Input side in px (default: the "
                                                   "architecture's).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 2e-3,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience (epochs).")] = 8,
    tta: Annotated[str, typer.Option(help="Test-time transforms, comma-separated (identity, "
                                     "rot90, rot180, rot270, flip_lr, flip_ud); the "
                                     "median is served.")] = "identity,rot90,rot180,rot270",
    steps_per_epoch: Annotated[int | None, typer.Option(help="Cap on steps per epoch.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds data, subsets and weights.")] = 0,
    models_dir: Annotated[Path | None, typer.Option(help="Registry root (default: "
                                                    "SKYSERVE_MODELS_DIR).")] = None,
    threads: Annotated[int | None, typer.Option(help="TensorFlow/ONNX Runtime threads.")] = None,
    render_workers: Annotated[int | None, typer.Option(help="Rendering processes.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="A seconds-long smoke run: tiny net, "
                                       "200 images at 32 px, 3 steps per epoch.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the inclination ensemble on synthetic GalSim galaxies and publish a new version."""
    # TensorFlow's C++ start-up chatter hides the progress lines; keep its warnings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.trainer.pipeline import PipelineOptions, run, summary_rows
    from services.trainer.settings import get_settings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    settings = get_settings()
    values: dict[str, object] = {
        "members": members, "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "epochs": epochs, "architecture": architecture, "input_size": input_size,
        "batch_size": batch_size, "learning_rate": learning_rate, "patience": patience,
        "steps_per_epoch": steps_per_epoch, "seed": seed, "tta": tta,
    }
    if tiny:
        values.update({k: v for k, v in TINY.items() if k != "render_workers"})
    command = _command(values)
    transforms = tuple(name.strip() for name in tta.split(",") if name.strip())
    options = PipelineOptions(
        task="inclination",
        models_dir=models_dir or settings.models_dir,
        threads=threads or settings.trainer_threads,
        render_workers=render_workers or (1 if tiny else settings.trainer_render_workers),
        command=command,
        **{**values, "tta": transforms},  # type: ignore[arg-type]
    )
    console.print(f"[bold]{command}[/bold]")
    try:
        result = run(options, say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table(title=f"inclination v{result.manifest.version} — held-out test set")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(result.metrics):
        table.add_row(name, value)
    console.print(table)
    console.print(f"timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))
    console.print(f"published to [bold]{result.version_dir}[/bold]")


@app.command()
def architectures() -> None:
    """List the architectures the trainer can build."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.trainer.architectures import ARCHITECTURES, build_model, flops_per_image
    from shared.taskdefs import get_task_definition

    task = get_task_definition("inclination")
    table = Table(title="architectures (parameters and MFLOP per image with the regression head)")
    for column in ("name", "input", "parameters", "MFLOP", "layers", "description"):
        table.add_column(column, justify="right" if column in ("parameters", "MFLOP") else "left")
    for arch in ARCHITECTURES.values():
        model = build_model(arch.name, task)
        table.add_row(arch.name, f"{arch.input_size} px", f"{model.count_params():,}",
                      f"{flops_per_image(model) / 1e6:,.1f}", arch.layers, arch.description)
    console.print(table)


# rejection, morphology, object-type and catalog (services/trainer/cli_tasks.py).
register_task_commands(app)
