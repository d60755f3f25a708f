"""Releases an ensemble for any task kind: train → ONNX → parity → served evaluation → registry.

:func:`release` takes ready :class:`~services.trainer.labelled.LabelledSet` splits
(synthetic scenes, real photos or a user's catalog), trains bagged members
(:mod:`services.trainer.fitting`), exports each with tf2onnx (with the MC-dropout
mask input when the members use MC dropout), refuses to publish unless ONNX Runtime
reproduces Keras within the tolerance (with an all-ones mask and with a random
mask), evaluates the ONNX members exactly as the worker serves them
(:mod:`services.trainer.scoring`), writes ``metrics.json`` and the plots into the
version folder, and publishes atomically with :class:`shared.registry.RegistryWriter`.
A failed run leaves no version behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.fitting import FitConfig, FittedMember, fit_members
from services.trainer.labelled import LabelledSet
from shared.registry import InputSpec, Manifest, Member, RegistryWriter, sha256_file
from shared.taskdefs import TaskDefinition

__all__ = ["ReleaseOptions", "ReleaseResult", "release", "export_member", "check_member_parity",
           "save_backbone", "headline_rows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseOptions:
    """Everything besides the data that one release needs; recorded in the manifest."""

    models_dir: Path = Path("models")
    fit: FitConfig = field(default_factory=FitConfig)
    tta: tuple[str, ...] = ("identity", "rot180")
    parity_images: int = 64
    parity_tolerance: float = 1e-4
    threads: int = 2
    command: str = ""
    backbone_out: Path | None = None  # save member 0's body weights here (transfer learning)
    backbone_source: dict[str, Any] | None = None  # provenance of a pretrained body used
    failures: int = 12


@dataclass
class ReleaseResult:
    """What a release produced."""

    manifest: Manifest
    version_dir: Path
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- export


def export_member(member: FittedMember, path: Path, spec: InputSpec) -> Path:
    """Export a member's export model: input ``image`` (+ ``mc_mask``), dynamic batch."""
    from services.trainer.export import export_onnx

    return export_onnx(member.models.export, path, input_name=spec.input_name,
                       mc=member.models.mc)


def check_member_parity(member: FittedMember, path: Path, x: np.ndarray, spec: InputSpec, *,
                        tolerance: float, threads: int) -> float:
    """Max |Keras − ONNX Runtime| over ``x``; with MC dropout, for a ones and a random mask.

    Raises
    ------
    services.trainer.export.ParityError
        If the shapes differ or any difference exceeds ``tolerance``.
    """
    from services.trainer.export import check_parity

    return check_parity(member.models.export, path, x, tolerance=tolerance, threads=threads,
                        mc=member.models.mc)


def save_backbone(member: FittedMember, path: Path, *, task: str, spec: InputSpec,
                  source: dict[str, Any]) -> Path:
    """Save a member's body weights (``.weights.h5``) and a JSON card beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    member.models.body.save_weights(str(path))
    from services.trainer.architectures import get_architecture

    card = {"task": task, "architecture": member.architecture,
            "layers": get_architecture(member.architecture).layers, "input_size": spec.size,
            "channels": spec.channels, "scaling": spec.scaling,
            "features": int(member.models.body.output.shape[-1]),
            "final_dropout": member.models.mc is None, **source}
    card_path = Path(str(path).removesuffix(".weights.h5") + ".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def headline_rows(task: TaskDefinition, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Headline metrics as (name, formatted value) rows for printing."""
    def fmt(v: Any) -> str:
        return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    rows: list[tuple[str, str]] = []
    if task.kind == "regression":
        keys = ["rms_deg", "mae_deg", "bias_m", "bias_b"]
    elif task.kind == "multilabel":
        keys = ["accuracy", "precision", "recall", "exact_match"]
        rows += [(f"{lab} acc / prec / rec", " / ".join(fmt(m[k]) for k in
                  ("accuracy", "precision", "recall"))) for lab, m in metrics["labels"].items()]
    elif task.kind == "classification":
        keys = ["accuracy", "macro_recall", "log_loss"]
        rows += [(f"recall {lab}", fmt(v)) for lab, v in metrics["per_class_recall"].items()]
    else:
        keys = ["vote_fraction_mae", "vote_fraction_mae_expected", "vote_fraction_mae_floor",
                "nll", "confident_answer_accuracy"]
    rows = [(k, fmt(metrics.get(k))) for k in keys if k in metrics] + rows
    rows.append(("parity_max_abs_diff", f"{metrics.get('parity_max_abs_diff', 0.0):.2g}"))
    return rows


# --------------------------------------------------------------------------- release


def _member_entry(member: FittedMember, path: Path, extra: dict[str, Any]) -> Member:
    return Member(
        name=member.name, file=path.name, architecture=member.architecture,
        sha256=sha256_file(path), params=member.params,
        subset_fraction=round(member.subset_fraction, 4), subset_seed=member.subset_seed,
        metrics={"val_loss": round(member.val_loss, 5), "epochs_run": member.epochs_run,
                 "best_epoch": member.best_epoch,
                 "train_seconds": round(member.train_seconds, 1), **extra},
    )


def _counts(task: TaskDefinition, data: LabelledSet) -> dict[str, int]:
    """Examples per class, positives per label or votes per answer (regression: the size)."""
    if task.kind == "regression":
        return {"n": len(data)}
    names = data.label_names or task.output_names
    y = np.asarray(data.y)
    counts = (np.bincount(y.astype(np.int64), minlength=len(names)) if y.ndim == 1
              else np.rint(y.sum(axis=0)))
    return {name: int(c) for name, c in zip(names, counts)}


def release(
    task: TaskDefinition,
    train: LabelledSet,
    val: LabelledSet | None,
    test: LabelledSet,
    options: ReleaseOptions,
    *,
    backbone: Callable[[], Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    data_description: dict[str, Any] | None = None,
    expected: np.ndarray | None = None,
    say: Callable[[str], None] = log.info,
) -> ReleaseResult:
    """Train, export, check, evaluate and publish one version of ``task``.

    Parameters
    ----------
    train, val, test
        The splits. ``val`` drives early stopping (and the regression bias fit);
        with ``val`` None members train the full schedule. ``test`` is never seen
        in training; metrics are measured on it.
    backbone
        Returns a fresh pretrained body; members are then fine-tuned
        (``options.fit.fine_tune``).
    extra_files
        File name → bytes written into the version folder (e.g. ``unusable_rows.csv``).
    expected
        Vote trees on synthetic data: the answer probabilities behind ``test``'s votes.

    Raises
    ------
    services.trainer.export.ParityError
        If an exported member does not reproduce Keras; nothing is published.
    """
    from services.trainer.evaluate import evaluate_task
    from services.trainer.export import onnx_session
    from services.trainer.heads import output_spec
    from services.trainer.publish import build_manifest, library_versions, publish, write_json
    from services.trainer.train import configure_tensorflow

    started = time.perf_counter()
    timings: dict[str, float] = {}
    spec = InputSpec(size=int(train.x.shape[1]), channels=int(train.x.shape[-1]),  # type: ignore[arg-type]
                     scaling=options_scaling(train))
    fit = options.fit
    configure_tensorflow(options.threads, fit.seed)
    say(f"training {fit.members} x {fit.architecture} on {len(train)} examples "
        f"({task.kind}{', MC dropout' if fit.mc_rate else ''}"
        f"{', fine-tuning a pretrained body' if backbone else ''})")
    members, weighting = fit_members(
        task, train.x, np.asarray(train.y), fit,
        val=(val.x, np.asarray(val.y)) if val is not None and fit.early_stopping else None,
        backbone=backbone)
    timings["train_s"] = time.perf_counter() - started
    for m in members:
        say(f"  {m.name}: {m.epochs_run} epochs (best {m.best_epoch}), loss {m.val_loss:.4f}, "
            f"{m.train_seconds:.0f} s")

    writer = RegistryWriter(Path(options.models_dir))
    staging = writer.stage(task.name)
    try:
        t0 = time.perf_counter()
        held_out = test.x[: options.parity_images]
        parity, entries, sessions = 0.0, [], {}
        for m in members:
            path = export_member(m, staging / f"{m.name}.onnx", spec)
            diff = check_member_parity(m, path, held_out, spec, tolerance=options.parity_tolerance,
                                       threads=options.threads)
            parity = max(parity, diff)
            entries.append(_member_entry(m, path, {"parity_max_abs_diff": diff}))
            sessions[m.name] = onnx_session(path, threads=options.threads)
        timings["export_s"] = time.perf_counter() - t0
        say(f"exported {len(members)} ONNX members; parity max abs diff {parity:.2e}"
            f"{' (MC mask: ones and random)' if fit.mc_rate else ''}")

        t0 = time.perf_counter()
        draft = build_manifest(task=task.name, members=entries, input_spec=spec,
                               output=output_spec(task, members[0].models.mc),
                               tta=list(options.tta))
        manifest, metrics = evaluate_task(task, draft, sessions, test, staging,
                                             failures=options.failures, val=val,
                                             expected=expected)
        metrics.update({"parity_max_abs_diff": parity, "n_train": len(train),
                        "n_val": len(val) if val is not None else 0, "n_test": len(test),
                        "tta": list(options.tta),
                        "mc_samples": fit.mc_samples if fit.mc_rate else 0,
                        "evaluated_on": test.description.get("split", "test"),
                        **weighting.describe(task)})
        timings["evaluate_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
        write_json(staging / "metrics.json", metrics)
        training = {
            "command": options.command,
            "data": {
                **(data_description or train.description),
                "n_train": len(train), "n_val": len(val) if val is not None else 0,
                "n_test": len(test),
                "train_label_counts": _counts(task, train),
                "test_label_counts": _counts(task, test),
            },
            "hyperparameters": {
                **{k: v for k, v in asdict(fit).items() if k != "fine_tune"},
                "fine_tune": asdict(fit.fine_tune) if fit.fine_tune and backbone else None,
                "loss": LOSSES[task.kind],
                "optimizer": "AdamW with cosine learning-rate decay",
                "early_stopping": (f"val_loss, patience {fit.patience}, best weights restored"
                                   if fit.early_stopping and val is not None else
                                   "none: the full schedule (the evaluation split stays unseen)"),
                "bagging": "each member trains on a random subset (subset_fraction, subset_seed)",
                **weighting.describe(task),
            },
            "backbone": options.backbone_source if backbone else None,
            "evaluation": {
                "metrics_on": f"{metrics['evaluated_on']} split ({len(test)} examples), served "
                "path: ONNX members x test-time transforms x MC samples -> "
                "shared.ensemble.summarize",
                "parity_images": int(len(held_out)),
                "parity_tolerance": options.parity_tolerance,
            },
            "library_versions": library_versions(),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "threads": options.threads,
        }
        manifest = manifest.model_copy(update={
            "members": entries,
            "metrics": _manifest_metrics(metrics),
            "parity_max_abs_diff": parity,
            "training": training,
        })
    except BaseException:
        writer.discard(staging)
        raise
    published = publish(writer, staging, manifest)
    version_dir = Path(options.models_dir) / task.name / str(published.version)
    if options.backbone_out is not None:
        save_backbone(members[0], options.backbone_out, task=task.name, spec=spec,
                      source={"version": published.version, "member": members[0].name,
                              "command": options.command})
        say(f"saved the body of {members[0].name} to {options.backbone_out}")
    say(f"published {task.name} v{published.version} at {version_dir}")
    return ReleaseResult(published, version_dir, metrics, timings)


LOSSES = {
    "regression": "mean squared error on targets scaled to (-1, 1) (tanh head)",
    "classification": "softmax cross-entropy from logits, class-weighted per example",
    "multilabel": "binary cross-entropy from logits per label, positive term weighted "
                  "for rare labels, averaged over labels",
    "vote_tree": "Dirichlet-multinomial negative log-likelihood of each question's vote "
                 "counts (concentrations 1 + 100 sigmoid(x)), summed over questions; "
                 "questions with no votes contribute 0 (Zoobot)",
}


def options_scaling(data: LabelledSet) -> str:
    """The input scaling a set was preprocessed with (``symmetric`` if any value < 0)."""
    scaling = data.description.get("scaling") if isinstance(data.description, dict) else None
    if scaling in ("unit", "symmetric"):
        return scaling
    return "symmetric" if float(np.min(data.x[: min(len(data), 64)])) < 0 else "unit"


def _manifest_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline part of ``metrics.json`` for the manifest (no curves, no per-bin tables)."""
    drop = {"reliability", "questions", "labels", "confusion", "root_confusion", "members",
            "rms_deg_by_bin", "baseline_axis_ratio_note"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    if "labels" in metrics:
        out["per_label"] = {lab: {k: m[k] for k in ("accuracy", "precision", "recall")}
                            for lab, m in metrics["labels"].items()}
    return out


def unusable_rows_csv(rows: list[dict[str, Any]]) -> bytes:
    """The ``unusable_rows.csv`` bytes for a list of ``{row, id, reason}`` dicts."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["row", "id", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()

