"""What a version's manifest says about how it was made and what it scored.

Members' entries (checksum and provenance), the ``training`` section (the command,
the recipe, the data, the hyper-parameters, the checks, library versions, timings)
and the headline metrics. The manifest is written by
:meth:`shared.registry.RegistryWriter.publish`, which checks every member's checksum.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.registry import Member, sha256_file
from shared.taskdefs import TaskDefinition

__all__ = ["LIBRARIES", "LOSSES", "library_versions", "member_entry", "headline_metrics",
           "headline_rows", "write_json"]

LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "galsim",
             "numpy", "pillow")

LOSSES = {
    "regression": "mean squared error on targets scaled to (-1, 1) (tanh head)",
    "classification": "softmax cross-entropy from logits, class-weighted per example",
    "multilabel": "binary cross-entropy from logits per label, positive term weighted "
                  "for rare labels, averaged over labels",
    "vote_tree": "Dirichlet-multinomial negative log-likelihood of each question's vote "
                 "counts (concentrations 1 + 100 sigmoid(x)), summed over questions; "
                 "questions with no votes contribute 0 (Zoobot)",
}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the model (those installed)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def member_entry(member: Any, path: Path, extra: dict[str, Any]) -> Member:
    """The manifest entry of a staged member file (``member``: a ``FittedMember``)."""
    return Member(
        name=member.name, file=path.name, architecture=member.architecture,
        sha256=sha256_file(path), params=member.params,
        subset_fraction=round(member.subset_fraction, 4), subset_seed=member.subset_seed,
        metrics={"val_loss": round(member.val_loss, 5), "epochs_run": member.epochs_run,
                 "best_epoch": member.best_epoch,
                 "train_seconds": round(member.train_seconds, 1), **extra},
    )


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline part of ``metrics.json`` for the manifest (no curves, no per-bin tables)."""
    drop = {"reliability", "questions", "labels", "confusion", "root_confusion", "members",
            "rms_deg_by_bin", "baseline_axis_ratio_note"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    if "labels" in metrics:
        out["per_label"] = {lab: {k: m[k] for k in ("accuracy", "precision", "recall")}
                            for lab, m in metrics["labels"].items()}
    return out


def headline_rows(task: TaskDefinition, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Headline metrics as (name, formatted value) rows for printing."""
    def fmt(v: Any) -> str:
        return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    rows: list[tuple[str, str]] = []
    if task.kind == "regression":
        keys = ["rms_deg", "mae_deg", "rms_deg_uncalibrated", "bias_m", "bias_b", "within_5deg",
                "error_floor", "error_spread_scale", "error_coverage_1sigma",
                "error_coverage_2sigma", "baseline_axis_ratio_rms_deg",
                "baseline_axis_ratio_mae_deg"]
        rows += [(f"member {name} rms_deg", fmt(m["rms_deg"]))
                 for name, m in metrics.get("members", {}).items()]
    elif task.kind == "multilabel":
        keys = ["accuracy", "precision", "recall", "exact_match"]
        rows += [(f"{lab} acc / prec / rec", " / ".join(fmt(m[k]) for k in
                  ("accuracy", "precision", "recall"))) for lab, m in metrics["labels"].items()]
    elif task.kind == "classification":
        keys = ["accuracy", "macro_recall", "supported_accuracy", "supported_macro_recall",
                "log_loss"]
        rows += [(f"recall {lab}", fmt(v)) for lab, v in metrics["per_class_recall"].items()]
    else:
        keys = ["vote_fraction_mae", "vote_fraction_mae_expected", "vote_fraction_mae_floor",
                "nll", "confident_answer_accuracy"]
    rows = [(k, fmt(metrics.get(k))) for k in keys if k in metrics] + rows
    if "parity_max_abs_diff" in metrics:
        rows.append(("parity_max_abs_diff", f"{metrics['parity_max_abs_diff']:.2g}"))
    return rows


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON with a trailing newline (diff-friendly in the repository)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
