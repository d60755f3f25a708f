"""The one release path of every task: data → members → ONNX + parity → evaluation → registry.

:func:`release` walks a recipe (:mod:`services.trainer.recipe`) down the path once:

1. **data** — the recipe's source builds the splits (:mod:`services.trainer.data`),
   every image through :func:`shared.preprocessing.preprocess`;
2. **members** — bagged members fitted one by one (:mod:`services.trainer.fit`),
   from scratch or from a pretrained body, each saved into the run folder
   (:mod:`services.trainer.runs`) as soon as it has trained;
3. **export + parity** — tf2onnx, and ONNX Runtime must reproduce Keras on held-out
   images (:mod:`services.trainer.export`);
4. **evaluation** — the version's number is claimed first, because MC-dropout masks
   are seeded by it; then the test set is answered by :func:`shared.members.answer`,
   exactly as the worker answers it (:mod:`services.trainer.evaluate`);
5. **manifest + publish** — metrics, plots and the manifest (with the command and the
   recipe) are staged and published atomically into the claimed version.

A failure after training leaves no version behind and keeps the run folder, from
which ``--resume`` finishes the run without training again. Nothing here depends on
which task it is: the recipe and the task's kind decide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.data import Splits, build_splits, split_seeds
from services.trainer.data.catalog import unusable_rows_csv
from services.trainer.fit import FittedMember, Weighting, weighting_for
from services.trainer.manifest import (
    LOSSES,
    headline_metrics,
    library_versions,
    member_entry,
    write_json,
)
from services.trainer.model.backbones import DEFAULT_CACHE, backbone_path
from services.trainer.recipe import Recipe, load_recipe
from services.trainer.runs import RunFolder
from shared.registry import InputSpec, Manifest, RegistryWriter
from shared.taskdefs import TaskDefinition, get_task_definition

__all__ = ["ReleaseResult", "release", "input_spec", "member_names", "pretrained_body",
           "rebuild_backbone", "save_backbone"]

log = logging.getLogger(__name__)


@dataclass
class ReleaseResult:
    """What a release produced."""

    manifest: Manifest
    version_dir: Path
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)  # members trained by this call
    loaded: list[str] = field(default_factory=list)  # members resumed from the run folder


def input_spec(recipe: Recipe) -> InputSpec:
    """The model input every split is preprocessed for (and the manifest serves)."""
    return InputSpec(size=recipe.input_size, channels=3, scaling=recipe.scaling)


def _backbone_name(recipe: Recipe) -> str:
    """Cache name of a body pretrained by ``recipe.backbone`` (tiny variants apart)."""
    name = recipe.backbone or recipe.task
    return name if recipe.variant == "default" else f"{name}-{recipe.variant}"


def save_backbone(member: FittedMember, path: Path, *, task: str, spec: InputSpec,
                  source: dict[str, Any]) -> Path:
    """Save a member's body weights (``.weights.h5``) and a JSON card beside them."""
    import json

    from services.trainer.model.bodies import get_architecture

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    member.models.body.save_weights(str(path))
    card = {"task": task, "architecture": member.architecture,
            "layers": get_architecture(member.architecture).layers, "input_size": spec.size,
            "channels": spec.channels, "scaling": spec.scaling,
            "features": int(member.models.body.output.shape[-1]),
            "final_dropout": member.models.mc is None, **source}
    card_path = Path(str(path).removesuffix(".weights.h5") + ".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def rebuild_backbone(task: str, path: Path, *, variant: str, seed: int, threads: int,
                     workers: int, say: Callable[[str], None] = log.info) -> None:
    """Train member 0 of ``task``'s recipe exactly as its default run does; save its body."""
    from services.trainer.fit import configure_tensorflow, fit_member

    recipe = load_recipe(task, tiny=variant == "tiny").model_copy(update={"seed": seed})
    definition = get_task_definition(task)
    spec = input_spec(recipe)
    data = build_splits(recipe.data.source, recipe.data.params, task=definition,
                        sizes=recipe.data.sizes, spec=spec, seed=seed, workers=workers)
    assert data.train is not None
    configure_tensorflow(threads, seed)
    val = (data.val.x, data.val.y) if data.val is not None and recipe.fit.early_stopping else None
    member = fit_member(definition, data.train.x, data.train.y, recipe.fit, 0, seed=seed,
                        val=val, weighting=weighting_for(definition, data.train.y, recipe.fit))
    save_backbone(member, path, task=task, spec=spec,
                  source={"version": None, "member": member.name,
                          "command": f"rebuild_backbone({task!r}, variant={variant!r}, "
                                     f"seed={seed})"})
    say(f"rebuilt the {task} backbone at {path}")


def pretrained_body(recipe: Recipe, *, cache: Path, threads: int, workers: int,
                    say: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    """A factory of fresh pretrained bodies for ``recipe.backbone`` and its card; ``(None, None)``
    when the recipe trains from scratch. A missing project backbone is rebuilt by its recipe.

    Raises
    ------
    ValueError, FileNotFoundError
        A cached body of another architecture or size; a missing ImageNet file.
    """
    from services.trainer.model.backbones import ensure_backbone, load_backbone, mobilenet_backbone
    from services.trainer.model.bodies import get_architecture

    if recipe.backbone is None:
        return None, None
    if recipe.backbone == "imagenet-mobilenet":
        if recipe.backbone_file is None:
            raise ValueError("The imagenet-mobilenet backbone needs a local weights file.")
        return mobilenet_backbone(recipe.backbone_file, input_size=recipe.input_size)
    backbone = recipe.backbone
    def rebuild(path: Path) -> None:
        rebuild_backbone(backbone, path, variant=recipe.variant, seed=recipe.seed,
                         threads=threads, workers=workers, say=say)

    path = ensure_backbone(_backbone_name(recipe), cache, say=say, rebuild=rebuild)
    factory, card = load_backbone(path)
    wanted = (recipe.fit.architecture, get_architecture(recipe.fit.architecture).layers,
              recipe.input_size)
    if (card["architecture"], card.get("layers"), card["input_size"]) != wanted:
        raise ValueError(f"Backbone {path} is a {card['architecture']} body "
                         f"({card.get('layers')}) at {card['input_size']} px; this "
                         f"recipe needs {wanted[0]} ({wanted[1]}) at {wanted[2]} px. "
                         "Delete it to have it rebuilt, or point --backbone-cache elsewhere.")
    return factory, card


def member_names(recipe: Recipe) -> list[str]:
    """The names the recipe's members get (and their run-folder files)."""
    return [f"{recipe.fit.architecture}-{i}" for i in range(recipe.fit.members)]


def _members(recipe: Recipe, task: TaskDefinition, run: RunFolder, data: Splits, *,
             threads: int, workers: int, cache: Path,
             say: Callable[[str], None]) -> tuple[list[FittedMember], Weighting, list[str]]:
    """The run's members: loaded from the run folder where saved, else fitted (and saved)."""
    from services.trainer.fit import configure_tensorflow, fit_member

    configure_tensorflow(threads, recipe.seed)
    fit = recipe.fit
    members: list[FittedMember | None] = [run.load_member(name) for name in member_names(recipe)]
    for member in members:
        if member is not None:
            say(f"  {member.name}: loaded from {run.path} (trained before)")
    trained: list[str] = []
    if all(m is not None for m in members):
        weighting = Weighting.from_description(task, run.state()["train"]["weighting"])
        return members, weighting, trained  # type: ignore[return-value]
    train, val = data.train, data.val
    assert train is not None
    weighting = weighting_for(task, train.y, fit)
    factory, card = pretrained_body(recipe, cache=cache, threads=threads, workers=workers, say=say)
    run.save_training_set(train.description, train.label_counts(), len(train),
                          weighting.describe(task), backbone=card)
    say(f"training {fit.members - sum(m is not None for m in members)} x {fit.architecture} on "
        f"{len(train)} examples ({task.kind}{', MC dropout' if fit.mc_rate else ''}"
        f"{', fine-tuning a pretrained body' if factory else ''})")
    early = (val.x, val.y) if val is not None and fit.early_stopping else None
    for i, member in enumerate(members):
        if member is None:
            member = fit_member(task, train.x, train.y, fit, i, seed=recipe.seed, val=early,
                                weighting=weighting, backbone=factory)
            run.save_member(member)
            members[i] = member
            trained.append(member.name)
            say(f"  {member.name}: {member.epochs_run} epochs (best {member.best_epoch}), "
                f"loss {member.val_loss:.4f}, {member.train_seconds:.0f} s; saved in {run.path}")
    return members, weighting, trained  # type: ignore[return-value]


def _training_section(recipe: Recipe, task: TaskDefinition, run: RunFolder, data: Splits,
                      weighting: Weighting, *, command: str, describe: dict[str, Any] | None,
                      metrics: dict[str, Any],
                      timings: dict[str, float], threads: int, workers: int) -> dict[str, Any]:
    fit, train = recipe.fit, run.state()["train"]
    test = data.test
    early = fit.early_stopping and data.val is not None
    return {
        "command": command,
        "recipe": recipe.record(),
        "data": {
            "source": recipe.data.source, "train": train["description"],
            "val": data.val.description if data.val is not None else None,
            "test": test.description, "seeds": split_seeds(recipe.seed), **(describe or {}),
            "n_train": train["n"], "n_val": len(data.val) if data.val is not None else 0,
            "n_test": len(test), "train_label_counts": train["label_counts"],
            "test_label_counts": test.label_counts(),
        },
        "hyperparameters": {
            **fit.model_dump(mode="json"), "seed": recipe.seed, "input_size": recipe.input_size,
            "loss": LOSSES[task.kind], "optimizer": "AdamW with cosine learning-rate decay",
            "early_stopping": (f"val_loss, patience {fit.patience}, best weights restored"
                               if early else
                               "none: the full schedule (the evaluation split stays unseen)"),
            "bagging": "each member trains on a random subset (subset_fraction, subset_seed)",
            "imbalance": weighting.describe(task),
        },
        "backbone": train.get("backbone"),
        "evaluation": {
            "metrics_on": f"{metrics['evaluated_on']} split ({len(test)} examples), served "
                          "path: shared.members.answer (ONNX members x test-time transforms x "
                          "MC samples with per-image masks -> shared.ensemble.summarize)",
            "calibration_fit_on": ("validation set" if fits_calibration(task, data)
                                   else None),
            "parity_images": min(recipe.checks.parity_images, len(test)),
            "parity_tolerance": recipe.checks.parity_tolerance,
        },
        "library_versions": library_versions(),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "threads": threads,
        "workers": workers,
        "resumed": run.state().get("resumed", []),
    }


def fits_calibration(task: TaskDefinition, data: Splits) -> bool:
    """Whether the evaluation fits a calibration on validation: a regression's error
    model, and its bias correction where the recipe asks and it helps."""
    return task.kind == "regression" and data.val is not None


def release(
    recipe: Recipe,
    *,
    models_dir: Path,
    run_dir: Path,
    threads: int = 2,
    workers: int = 1,
    command: str = "",
    backbone_cache: Path = DEFAULT_CACHE,
    task: TaskDefinition | None = None,
    splits: Splits | None = None,
    describe: dict[str, Any] | None = None,
    say: Callable[[str], None] = log.info,
) -> ReleaseResult:
    """Build, check, evaluate and publish one version of ``recipe.task``.

    Parameters
    ----------
    run_dir
        The run folder. A folder holding a started run is resumed: its saved members
        are loaded instead of trained, and ``recipe`` must train what it trained.
    task
        The task definition (default: the built-in or registry task ``recipe.task``).
    splits
        Ready splits (a user's catalog); otherwise the recipe's source builds them.
    describe
        Extra data description for the manifest (``training.data``).

    Raises
    ------
    services.trainer.export.ParityError
        If an exported member does not reproduce Keras; nothing is published and the
        run folder keeps the trained members.
    """
    from services.trainer.evaluate import evaluate
    from services.trainer.export import export_member, member_parity, onnx_ensemble
    from services.trainer.model.heads import output_spec

    started = time.perf_counter()
    task = task or get_task_definition(recipe.task, Path(models_dir))
    run = RunFolder(run_dir)
    command = run.start(recipe, command)  # a resumed run keeps the command that started it
    spec = input_spec(recipe)
    timings: dict[str, float] = {}
    if splits is None:
        need_train = bool(run.missing(member_names(recipe)))
        say(f"building the {recipe.task} data from source {recipe.data.source!r} at "
            f"{spec.size} px ({workers} process(es)){'' if need_train else '; held-out only'}")
        splits = build_splits(recipe.data.source, recipe.data.params, task=task,
                              sizes=recipe.data.sizes, spec=spec, seed=recipe.seed,
                              workers=workers, train=need_train)
        timings["data_s"] = time.perf_counter() - started
    t0 = time.perf_counter()
    members, weighting, trained = _members(recipe, task, run, splits, threads=threads,
                                           workers=workers, cache=Path(backbone_cache), say=say)
    timings["train_s"] = time.perf_counter() - t0
    test, val = splits.test, splits.val

    writer = RegistryWriter(Path(models_dir))
    version = writer.claim(task.name)
    staging = writer.stage(task.name)
    try:
        t0 = time.perf_counter()
        held_out = test.x[: recipe.checks.parity_images]
        parity, entries = 0.0, []
        for m in members:
            path = export_member(m, staging / f"{m.name}.onnx")
            diff = member_parity(m, path, held_out, tolerance=recipe.checks.parity_tolerance,
                                 threads=threads)
            parity = max(parity, diff)
            entries.append(member_entry(m, path, {"parity_max_abs_diff": diff}))
        timings["export_s"] = time.perf_counter() - t0
        say(f"exported {len(members)} ONNX members; parity max abs diff {parity:.2e}"
            f"{' (MC mask: ones and random)' if recipe.fit.mc_rate else ''}")

        t0 = time.perf_counter()
        draft = Manifest(task=task.name, version=version, members=entries, input=spec,
                         output=output_spec(task, members[0].models.mc), tta=recipe.tta)  # type: ignore[arg-type]
        manifest, metrics = evaluate(task, draft, onnx_ensemble(draft, staging, threads=threads),
                                     test, staging, val=val, failures=recipe.checks.failures,
                                     calibrate=fits_calibration(task, splits),
                                     bias=recipe.checks.bias_correction)
        metrics.update({"parity_max_abs_diff": parity, "n_train": run.state()["train"]["n"],
                        "n_val": len(val) if val is not None else 0, "n_test": len(test),
                        "evaluated_on": test.description.get("split", "test"),
                        **weighting.describe(task)})
        timings["evaluate_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        per_member = metrics.get("members", {})
        entries = [e.model_copy(update={"metrics": {**e.metrics, **{
            f"test_{k}": round(v, 4) for k, v in per_member.get(e.name, {}).items()}}})
            for e in entries]
        unusable = [row for d in (run.state()["train"]["description"], test.description)
                    for row in d.get("unusable_rows", [])]
        if unusable:  # every row a source could not use, with its reasons
            (staging / "unusable_rows.csv").write_bytes(unusable_rows_csv(unusable))
        write_json(staging / "metrics.json", metrics)
        manifest = manifest.model_copy(update={
            "members": entries, "metrics": headline_metrics(metrics),
            "parity_max_abs_diff": parity,
            "training": _training_section(recipe, task, run, splits, weighting, command=command,
                                          describe=describe, metrics=metrics,
                                          timings=timings, threads=threads, workers=workers),
        })
        published = writer.publish(staging, manifest, claimed=version)
    except BaseException:
        writer.discard(staging)
        writer.unclaim(task.name, version)
        say(f"nothing published; the trained members are kept in {run.path}: finish with "
            f"`skyserve-train {recipe.task} --resume {run.path}`")
        raise
    version_dir = Path(models_dir) / task.name / str(published.version)
    if recipe.save_backbone:
        path = backbone_path(Path(backbone_cache), _backbone_name(recipe))
        save_backbone(members[0], path, task=task.name, spec=spec,
                      source={"version": published.version, "member": members[0].name,
                              "command": command})
        say(f"saved the body of {members[0].name} to {path}")
    run.remove()
    say(f"published {task.name} v{published.version} at {version_dir}")
    return ReleaseResult(published, version_dir, metrics, timings, trained,
                         [m.name for m in members if m.name not in trained])
