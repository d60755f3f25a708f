"""The whole trainer run for a task: data → ensemble → ONNX → evaluation → registry.

The command line calls :func:`run`; tests call it with tiny numbers. Nothing is
published unless every member exports, passes the parity check and the evaluation
completes; a failed run leaves no version behind (its staging folder is removed).

Inclination (synthetic GalSim disks, bias correction, axis-ratio baseline) runs
here; every other task — rejection, morphology, object type — runs its recipe
(:mod:`services.trainer.recipes`) through the kind-generic
:func:`services.trainer.release.release`, which a user's catalog uses too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.architectures import get_architecture
from services.trainer.dataset import Dataset, build_dataset
from services.trainer.publish import (
    build_manifest,
    library_versions,
    member_entry,
    publish,
    write_json,
)
from services.trainer.train import TrainConfig
from shared.preprocessing import TTA_TRANSFORMS
from shared.registry import InputSpec, Manifest, OutputSpec, RegistryWriter
from shared.taskdefs import get_task_definition

__all__ = ["PipelineOptions", "PipelineResult", "run", "summary_rows", "DATA_DESCRIPTION"]

log = logging.getLogger(__name__)

DATA_DESCRIPTION: dict[str, Any] = {
    "source": "synthetic galaxies rendered with GalSim (services.trainer.synthetic), exact truth",
    "galaxy": "galsim.InclinedExponential thick disk (h/r 0.08-0.18) + Sersic bulge "
    "(n 2-4, 0-45 % of the light in 80 % of galaxies) + projected star-forming knots "
    "(70 %) + faint logarithmic spiral modulation (70 %), any position angle",
    "observation": "Moffat (70 %) or Kolmogorov PSF, FWHM/scale radius 0.04-0.45 "
    "(log-uniform, at least 0.8 px); S/N 40-800 "
    "(log-uniform); sky offset; 72-136 px cutouts (10 % non-square), galaxy offset up "
    "to 10 % of the side, scale radius 0.095 x side x (0.8-1.2); 10 % with a bright "
    "foreground star (half with diffraction spikes)",
    "rendering": "50 % colour (i, r, g -> R, G, B), 50 % single-band g/r/i greyscale of "
    "which half inverted (black on white); asinh stretch with varied black/white point, "
    "softening and gamma; 8-bit PNG",
    "labels": "inclination uniform within 5-degree bins over the task range (balanced)",
    "preprocessing": "shared.preprocessing.preprocess(png_bytes, manifest.input)",
    "augmentation": "render time: rotation (any PA), translation, scale, blur (PSF), noise, "
    "brightness/gamma, greyscale, inversion, star; training time: random flips and 90-degree "
    "rotations (aspect ratio always kept)",
}


@dataclass(frozen=True)
class PipelineOptions:
    """Everything one run needs; recorded in the manifest so the run can be repeated."""

    task: str = "inclination"
    models_dir: Path = Path("models")
    architecture: str = "compact"
    input_size: int | None = None
    members: int = 3
    n_train: int = 24000
    n_val: int = 1000
    n_test: int = 1500
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    patience: int = 8
    steps_per_epoch: int | None = None
    seed: int = 0
    # Inclination does not change under any rotation of the image; the median over the
    # four quarter turns averages out more of a member's orientation-dependent error.
    tta: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270")
    parity_images: int = 128
    parity_tolerance: float = 1e-4
    threads: int = 2
    render_workers: int = 2
    command: str = ""


@dataclass
class PipelineResult:
    """What a run produced."""

    manifest: Manifest
    version_dir: Path
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _seeds(seed: int) -> dict[str, int]:
    # Far apart so that train, validation and test never share an example seed.
    return {"train": seed, "val": seed + 1_000_003, "test": seed + 2_000_006}


def run(options: PipelineOptions, *, say: Callable[[str], None] = log.info) -> PipelineResult:
    """Render, train, export, check, evaluate and publish one version of ``options.task``.

    Raises
    ------
    ValueError
        Bad options (unknown architecture, a task without a regression range, ...).
    services.trainer.export.ParityError
        If an exported member does not reproduce Keras; nothing is published.
    """
    task = get_task_definition(options.task)
    if task.name != "inclination":
        return _run_recipe(options, say=say)
    assert task.range is not None
    unknown = [name for name in options.tta if name not in TTA_TRANSFORMS]
    if unknown:  # fail before training, not after it
        raise ValueError(f"Unknown test-time transform(s) {', '.join(map(repr, unknown))}; "
                         f"use {', '.join(TTA_TRANSFORMS)}.")
    arch = get_architecture(options.architecture)
    spec = InputSpec(size=options.input_size or arch.input_size, channels=3, scaling="unit")
    seeds = _seeds(options.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    say(f"rendering {options.n_train} + {options.n_val} + {options.n_test} galaxies "
        f"at {spec.size} px with {options.render_workers} process(es)")
    inclination_range = task.range

    def render(n: int, seed: int, measure: bool = False) -> Dataset:
        return build_dataset(n, seed=seed, spec=spec, inclination_range=inclination_range,
                             workers=options.render_workers, measure=measure)

    train = render(options.n_train, seeds["train"])
    val = render(options.n_val, seeds["val"])
    test = render(options.n_test, seeds["test"], measure=True)  # measured: the baseline
    timings["render_s"] = time.perf_counter() - started

    # Training, export and evaluation load only after rendering; the rendering workers
    # are spawned (not forked), so they never carry this process's TensorFlow threads.
    from services.trainer.evaluate import evaluate_regression, write_plots
    from services.trainer.export import check_parity, export_onnx, onnx_session
    from services.trainer.train import configure_tensorflow, train_ensemble

    configure_tensorflow(options.threads, options.seed)
    config = TrainConfig(
        architecture=options.architecture,
        input_size=spec.size,
        members=options.members,
        epochs=options.epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        patience=options.patience,
        seed=options.seed,
        steps_per_epoch=options.steps_per_epoch,
    )
    say(f"training {options.members} x {options.architecture} members")
    t0 = time.perf_counter()
    members = train_ensemble(train, val, task, config)
    timings["train_s"] = time.perf_counter() - t0
    for m in members:
        say(f"  {m.name}: {m.epochs_run} epochs (best {m.best_epoch}), "
            f"val RMS {m.val_rms_deg:.2f} deg, {m.train_seconds:.0f} s")

    writer = RegistryWriter(Path(options.models_dir))
    staging = writer.stage(task.name)
    try:
        t0 = time.perf_counter()
        parity = 0.0
        entries = []
        sessions = {}
        held_out = test.x[: options.parity_images]
        for m in members:
            path = export_onnx(m.model, staging / f"{m.name}.onnx", input_name=spec.input_name)
            diff = check_parity(m.model, path, held_out, tolerance=options.parity_tolerance,
                                threads=options.threads)
            parity = max(parity, diff)
            entries.append(member_entry(m, path, {"parity_max_abs_diff": diff}))
            sessions[m.name] = onnx_session(path, threads=options.threads)
        timings["export_s"] = time.perf_counter() - t0
        say(f"exported {len(members)} ONNX members; parity max abs diff {parity:.2e}")

        t0 = time.perf_counter()
        draft = build_manifest(
            task=task.name,
            members=entries,
            input_spec=spec,
            output=OutputSpec(activation="tanh_range"),
            tta=list(options.tta),
        )
        manifest, metrics, curves = evaluate_regression(
            task, draft, sessions,
            val_x=val.x, val_y=val.y, test_x=test.x, test_y=test.y,
            test_measured_q=test.truth["measured_axis_ratio"],
        )
        metrics["parity_max_abs_diff"] = parity
        entries = [
            e.model_copy(update={"metrics": {**e.metrics,
                                             **{f"test_{k}": round(v, 4) for k, v in
                                                metrics["members"][e.name].items()}}})
            for e in entries
        ]
        plots = write_plots(staging, curves, manifest.calibration, task)  # type: ignore[arg-type]
        timings["evaluate_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        metrics["plots"] = plots
        write_json(staging / "metrics.json", metrics)
        training = {
            "command": options.command,
            "data": {
                **DATA_DESCRIPTION,
                "n_train": options.n_train,
                "n_val": options.n_val,
                "n_test": options.n_test,
                "seeds": seeds,
                "range": list(task.range),
                "balanced_bin_deg": 5,
            },
            "hyperparameters": {
                **asdict(config),
                "loss": "mean squared error on targets scaled to (-1, 1)",
                "optimizer": "AdamW with cosine learning-rate decay",
                "early_stopping": f"val_loss, patience {options.patience}, best weights restored",
                "bagging": "each member trains on a random subset (subset_fraction, subset_seed)",
            },
            "evaluation": {
                "bias_fit_on": "validation set",
                "metrics_on": "test set (separate seed), served path: TTA median per member, "
                "bias correction, clipping, ensemble median",
                "parity_images": int(len(held_out)),
                "parity_tolerance": options.parity_tolerance,
            },
            "library_versions": library_versions(),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "threads": options.threads,
            "render_workers": options.render_workers,
        }
        manifest = manifest.model_copy(update={
            "members": entries,
            "metrics": {k: v for k, v in metrics.items() if k != "baseline_axis_ratio_note"},
            "parity_max_abs_diff": parity,
            "training": training,
        })
    except BaseException:
        writer.discard(staging)
        raise
    published = publish(writer, staging, manifest)
    version_dir = Path(options.models_dir) / task.name / str(published.version)
    say(f"published {task.name} v{published.version} at {version_dir}")
    return PipelineResult(published, version_dir, metrics, timings)


def _run_recipe(options: PipelineOptions, *, say: Callable[[str], None]) -> PipelineResult:
    """Any other task: its recipe with these options' sizes and hyper-parameters."""
    from services.trainer.recipes import recipe_for, run_recipe

    recipe = recipe_for(
        options.task, architecture=options.architecture, input_size=options.input_size,
        members=options.members, n_train=options.n_train, n_val=options.n_val,
        n_test=options.n_test, epochs=options.epochs, batch_size=options.batch_size,
        learning_rate=options.learning_rate, patience=options.patience,
        steps_per_epoch=options.steps_per_epoch, tta=tuple(options.tta))
    result = run_recipe(recipe, models_dir=Path(options.models_dir), seed=options.seed,
                        threads=options.threads, workers=options.render_workers,
                        command=options.command, say=say)
    return PipelineResult(result.manifest, result.version_dir, result.metrics, result.timings)


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Headline metrics as (name, formatted value) rows for printing."""
    rows = [(k, f"{metrics[k]:.3g}" if k == "parity_max_abs_diff" else f"{metrics[k]:.3f}")
            for k in ("rms_deg", "mae_deg", "rms_deg_uncalibrated", "bias_m", "bias_b",
                      "within_5deg", "baseline_axis_ratio_rms_deg",
                      "baseline_axis_ratio_mae_deg", "parity_max_abs_diff")
            if isinstance(metrics.get(k), float)]
    rows += [(f"member {name} rms_deg", f"{m['rms_deg']:.3f}")
             for name, m in metrics.get("members", {}).items()]
    return rows
