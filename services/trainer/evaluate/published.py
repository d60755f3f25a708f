"""Re-evaluate a published version through the served path and compare with its manifest.

The held-out sets are rebuilt from the version's recipe (its seeds make them
deterministic), the member files are checked against their checksums, and the
version is evaluated as it is (its calibration is not refitted) by
:func:`services.trainer.evaluate.evaluate` — :func:`shared.members.answer`, the
worker's path. Versions published before recipes were recorded use the task's
default recipe file, after checking that its seeds and sizes are the recorded ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.trainer.recipe import Recipe, load_recipe
from shared.registry import Manifest, RegistryReader
from shared.taskdefs import get_task_definition

__all__ = ["Reevaluation", "recipe_of", "reevaluate", "republish"]


@dataclass
class Reevaluation:
    """A version's published headline metrics next to the ones measured now."""

    manifest: Manifest
    recipe: Recipe
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def comparison(self) -> list[tuple[str, float, float]]:
        """``(metric, published, now)`` for every numeric headline metric present in both."""
        rows = []
        for key, old in self.manifest.metrics.items():
            new = self.metrics.get(key)
            if isinstance(old, int | float) and isinstance(new, int | float) \
                    and not isinstance(old, bool):
                rows.append((key, float(old), float(new)))
        return rows


def recipe_of(manifest: Manifest) -> tuple[Recipe, list[str]]:
    """The recipe a version was built with, and notes on how it was found.

    Raises
    ------
    ValueError
        If an older version's recorded seeds or sizes differ from its task's default
        recipe (its held-out sets cannot be rebuilt from it).
    """
    training = manifest.training
    notes: list[str] = []
    if training.get("recipe"):
        recipe = Recipe.model_validate(training["recipe"])
    else:
        recipe = load_recipe(manifest.task)
        data = training.get("data", {})
        seeds = data.get("seeds")
        from services.trainer.data import split_seeds

        if seeds is not None and seeds != split_seeds(recipe.seed):
            raise ValueError(f"{manifest.task} v{manifest.version} was built with seeds {seeds}; "
                             f"the default recipe uses {split_seeds(recipe.seed)}.")
        for split in ("val", "test"):
            n, wanted = data.get(f"n_{split}"), recipe.data.sizes[split]
            if wanted is not None and n not in (None, 0, wanted):
                raise ValueError(f"{manifest.task} v{manifest.version} has n_{split} = {n}; the "
                                 f"default recipe makes {wanted}.")
        notes.append(f"no recipe recorded in v{manifest.version}: the default recipe file "
                     f"{manifest.task}.toml rebuilt its held-out sets (same seeds and sizes)")
    recipe = recipe.model_copy(update={"input_size": manifest.input.size,
                                       "scaling": manifest.input.scaling})
    return recipe, notes


def _csv_note(manifest: Manifest, test_description: dict[str, Any]) -> list[str]:
    """Say so when a photo catalogue changed since the version was evaluated."""
    recorded = (manifest.training.get("data", {}).get("test") or {}).get("csv_sha256")
    now = test_description.get("csv_sha256")
    if recorded and now and recorded != now:
        return [f"the labelled CSV changed since v{manifest.version} was evaluated "
                f"(sha256 {recorded[:12]}… then, {now[:12]}… now): its evaluation set differs"]
    return []


def reevaluate(task_name: str, version: int | None, *, models_dir: Path, folder: Path,
               workers: int = 1, threads: int = 2) -> Reevaluation:
    """Evaluate a published version again, as served; plots go into ``folder``.

    Raises
    ------
    UnknownTask, UnknownModelVersion, ModelIntegrityError
        No such version, or a member file that does not match its checksum.
    ValueError
        The version's held-out sets cannot be rebuilt (a user catalog, other seeds).
    """
    from services.trainer.data import build_splits
    from services.trainer.evaluate import evaluate
    from services.trainer.export import onnx_ensemble
    from services.trainer.release import input_spec

    reader = RegistryReader(Path(models_dir))
    manifest = reader.manifest(task_name, version)
    for member in manifest.members:
        reader.member_path(manifest, member, verify=True)
    task = get_task_definition(task_name, Path(models_dir))
    recipe, notes = recipe_of(manifest)
    if recipe.data.source == "catalog":
        raise ValueError(f"{task_name} v{manifest.version} was trained on a user catalog; "
                         "re-evaluate it from its CSV with skyserve-train catalog.")
    data = build_splits(recipe.data.source, recipe.data.params, task=task,
                        sizes=recipe.data.sizes, spec=input_spec(recipe), seed=recipe.seed,
                        workers=workers, train=False)
    notes += _csv_note(manifest, data.test.description)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runners = onnx_ensemble(manifest, reader.version_dir(task_name, manifest.version),
                           threads=threads)
    _, metrics = evaluate(task, manifest, runners, data.test, folder, val=data.val,
                          calibrate=False, failures=recipe.checks.failures)
    metrics["evaluated_on"] = data.test.description.get("split", "test")
    digest = hashlib.sha256(data.test.x.tobytes()).hexdigest()
    notes.append(f"test inputs sha256 {digest[:16]}… ({len(data.test)} images)")
    return Reevaluation(manifest, recipe, metrics, notes)


def republish(task_name: str, version: int | None, *, models_dir: Path, workers: int = 1,
              threads: int = 2, command: str = "") -> tuple[Manifest, dict[str, Any]]:
    """Publish a published version's member files again as a new version, with what the
    release path fits on validation today (a regression's bias correction and error
    model) and the metrics it measures as served today (on today's labelled CSV).

    A published version is never edited: the new version holds byte-identical member
    files, the old manifest's training record (its recipe recorded, plus
    ``training.republished_from`` with this ``command``) and freshly computed
    ``metrics.json`` and plots — what a full rebuild's evaluation step computes from
    the same members.

    Raises
    ------
    UnknownTask, UnknownModelVersion, ModelIntegrityError
        No such version, or a member file that does not match its checksum.
    ValueError
        The version's held-out sets cannot be rebuilt, or its task fits nothing.
    """
    import shutil

    from services.trainer.data import build_splits
    from services.trainer.evaluate import evaluate
    from services.trainer.export import onnx_ensemble
    from services.trainer.manifest import headline_metrics, write_json
    from services.trainer.release import fits_calibration, input_spec
    from shared.registry import RegistryWriter

    reader = RegistryReader(Path(models_dir))
    source = reader.manifest(task_name, version)
    for member in source.members:
        reader.member_path(source, member, verify=True)
    task = get_task_definition(task_name, Path(models_dir))
    recipe, notes = recipe_of(source)
    if recipe.data.source == "catalog":
        raise ValueError(f"{task_name} v{source.version} was trained on a user catalog; "
                         "retrain it from its CSV with skyserve-train catalog.")
    data = build_splits(recipe.data.source, recipe.data.params, task=task,
                        sizes=recipe.data.sizes, spec=input_spec(recipe), seed=recipe.seed,
                        workers=workers, train=False)
    calibrate = fits_calibration(task, data)
    writer = RegistryWriter(Path(models_dir))
    new_version = writer.claim(task.name)
    staging = writer.stage(task.name)
    try:
        folder = reader.version_dir(task_name, source.version)
        for member in source.members:
            shutil.copy2(folder / member.file, staging / member.file)
        draft = source.model_copy(update={"version": new_version, "calibration": None,
                                          "metrics": {}, "created": datetime.now(UTC)})
        manifest, metrics = evaluate(task, draft, onnx_ensemble(draft, staging, threads=threads),
                                     data.test, staging, val=data.val, calibrate=calibrate,
                                     bias=recipe.checks.bias_correction,
                                     failures=recipe.checks.failures)
        metrics.update({k: source.metrics[k] for k in ("parity_max_abs_diff", "n_train")
                        if k in source.metrics})
        metrics.update(n_val=len(data.val) if data.val is not None else 0, n_test=len(data.test),
                       evaluated_on=data.test.description.get("split", "test"))
        write_json(staging / "metrics.json", metrics)
        training = {**source.training, "recipe": recipe.record(), "republished_from": {
            "version": source.version, "command": command,
            "note": "same member files; metrics measured as served by this command"
                    + ("; error model (and a bias correction where the recipe asks and it "
                       "helps on held-out validation halves) fitted on the validation set"
                       if calibrate else ""),
            "notes": notes}}
        training["evaluation"] = {
            **training.get("evaluation", {}),
            "metrics_on": f"{metrics['evaluated_on']} split ({len(data.test)} examples), served "
                          "path: shared.members.answer (ONNX members x test-time transforms x "
                          "MC samples with per-image masks -> shared.ensemble.summarize)",
            "calibration_fit_on": "validation set" if calibrate else None}
        training["data"] = {**training.get("data", {}), "test": data.test.description,
                            "n_test": len(data.test),
                            "test_label_counts": data.test.label_counts()}
        manifest = manifest.model_copy(update={"metrics": headline_metrics(metrics),
                                               "training": training})
        published = writer.publish(staging, manifest, claimed=new_version)
    except BaseException:
        writer.discard(staging)
        writer.unclaim(task.name, new_version)
        raise
    return published, metrics
