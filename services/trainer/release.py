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

from services.trainer.fitting import FitConfig, FittedMember, Weighting, fit_members
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


def export_member(member: FittedMember, path: Path, spec: InputSpec, *, opset: int = 17) -> Path:
    """Export a member's export model to ONNX: input ``image`` (+ ``mc_mask``), batch dynamic."""
    import tensorflow as tf
    import tf2onnx

    model = member.models.export
    signature = [tf.TensorSpec((None, spec.size, spec.size, spec.channels), tf.float32,
                               name=spec.input_name)]
    mc = member.models.mc
    if mc is not None:
        signature.append(tf.TensorSpec((None, mc.units), tf.float32, name=mc.mask_input))
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset,
                               output_path=str(path))
    return Path(path)


def check_member_parity(member: FittedMember, path: Path, x: np.ndarray, spec: InputSpec, *,
                        tolerance: float, threads: int, seed: int = 0) -> float:
    """Max |Keras − ONNX Runtime| over ``x``; with MC dropout, for a ones mask and a random one.

    Raises
    ------
    services.trainer.export.ParityError
        If the shapes differ or any difference exceeds ``tolerance``.
    """
    from services.trainer.export import ParityError, onnx_session

    session = onnx_session(path, threads=threads)
    mc = member.models.mc
    feeds: list[dict[str, np.ndarray]] = [{spec.input_name: x}]
    if mc is not None:
        keep = 1.0 - mc.rate
        rng = np.random.default_rng(seed)
        random_mask = (rng.random((len(x), mc.units)) < keep).astype(np.float32) / keep
        feeds = [{spec.input_name: x, mc.mask_input: np.ones((len(x), mc.units), np.float32)},
                 {spec.input_name: x, mc.mask_input: random_mask}]
    worst = 0.0
    for feed in feeds:
        inputs = [feed[spec.input_name], feed[mc.mask_input]] if mc is not None else feed[
            spec.input_name]
        expected = np.asarray(member.models.export(inputs, training=False), np.float32)
        got = session.run(None, {k: np.ascontiguousarray(v, np.float32)
                                 for k, v in feed.items()})[0]
        if expected.shape != got.shape:
            raise ParityError(f"{path.name}: ONNX output shape {got.shape} != Keras "
                              f"{expected.shape}.")
        diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityError(
                f"{path.name}: ONNX Runtime differs from Keras by up to {diff:.3g} on {len(x)} "
                f"held-out images (tolerance {tolerance:g}"
                f"{', MC mask ' + ('ones' if feed is feeds[0] else 'random') if mc else ''}); "
                "not publishing.")
        worst = max(worst, diff)
    return worst


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


# --------------------------------------------------------------------------- evaluation


def _caption(ids: list[str], k: int, text: str) -> str:
    return f"{ids[k][-26:]}\n{text}"


def evaluate_release(task: TaskDefinition, manifest: Manifest, sessions: dict[str, Any],
                     test: LabelledSet, folder: Path, *, failures: int = 12,
                     val: LabelledSet | None = None,
                     expected: np.ndarray | None = None) -> tuple[Manifest, dict[str, Any]]:
    """Metrics and plots of the served answers on ``test``; plots go into ``folder``.

    Regression fits the bias correction on ``val`` first (never on ``test``) and
    returns the manifest with its calibration.
    """
    from services.trainer import plots, scoring

    raw = scoring.raw_outputs(sessions, manifest, test.x)
    names: list[str] = []
    y = np.asarray(test.y)
    if task.kind == "regression":
        from services.trainer.evaluate import evaluate_regression, write_plots

        if val is None:
            raise ValueError("A regression release needs a validation set for the bias fit.")
        manifest, metrics, curves = evaluate_regression(
            task, manifest, sessions, val_x=val.x, val_y=np.asarray(val.y, np.float64),
            test_x=test.x, test_y=y.astype(np.float64))
        names += write_plots(folder, curves, manifest.calibration, task)  # type: ignore[arg-type]
        err = np.abs(curves["pred"] - curves["truth"])
        worst = np.argsort(-err)[:failures]
        names.append(plots.failures_plot(folder, test.x[worst], [
            _caption(test.ids, k, f"true {curves['truth'][k]:.1f} pred {curves['pred'][k]:.1f}")
            for k in worst], title="Largest errors (served, bias-corrected)"))
        metrics["plots"] = names
        return manifest, metrics
    probs = scoring.served_probabilities(task, manifest, raw)
    labels = task.output_names
    if task.kind == "classification":
        metrics = scoring.classification_metrics(task, y, probs)
        names.append(plots.confusion_plot(folder, metrics["confusion"], labels,
                                          title=f"{task.name}: confusion (n={len(y)})"))
        names.append(plots.reliability_plot(folder, {"top-1 probability": metrics["reliability"]},
                                            title=f"{task.name}: reliability of the top class"))
        pred = probs.argmax(axis=1)
        wrong = np.flatnonzero(pred != y)
        worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:failures]
        caption = [_caption(test.ids, k, f"true {labels[y[k]]}\npred {labels[pred[k]]} "
                            f"{probs[k, pred[k]]:.2f}") for k in worst]
    elif task.kind == "multilabel":
        metrics = scoring.multilabel_metrics(task, y, probs)
        head = metrics["labels"][labels[0]]
        names.append(plots.confusion_plot(
            folder, [[head["tn"], head["fp"]], [head["fn"], head["tp"]]],
            [f"not {labels[0]}", labels[0]], title=f"{task.name}: {labels[0]} (p >= 0.5)"))
        names.append(plots.label_bars_plot(folder, metrics["labels"]))
        names.append(plots.reliability_plot(
            folder, {lab: scoring.reliability(probs[:, k], y[:, k]) for k, lab in
                     enumerate(labels)}, title=f"{task.name}: reliability per label"))
        err = np.abs(probs[:, 0] - y[:, 0])
        worst = np.argsort(-err)[:failures]
        caption = [_caption(test.ids, k, f"{labels[0]} true {int(y[k, 0])} p {probs[k, 0]:.2f}\n"
                            + ",".join(lab for j, lab in enumerate(labels[1:], 1) if y[k, j]))
                   for k in worst]
    elif task.kind == "vote_tree":
        assert task.vote_tree is not None
        metrics = scoring.vote_tree_metrics(task, manifest, raw, y, probs, expected)
        confident = scoring.confident_questions(task, y)
        spans = scoring.question_spans(task)
        counts = y.astype(np.float64)
        observed = np.concatenate([counts[:, a:b] / np.maximum(counts[:, a:b].sum(1, keepdims=True),
                                                               1.0) for a, b in spans], axis=1)
        questions = [(q.name, q.answers, a) for q, (a, _) in zip(task.vote_tree.questions, spans)]
        names.append(plots.vote_fraction_plot(folder, questions, probs, observed, confident))
        asked = np.concatenate([np.repeat(counts[:, a:b].sum(1, keepdims=True) > 0, b - a, 1)
                                for a, b in spans], axis=1)
        metrics["reliability"] = scoring.reliability(probs[asked], observed[asked])
        names.append(plots.reliability_plot(
            folder, {"asked answers": metrics["reliability"]},
            title="Predicted vs observed vote fraction (binned)"))
        root = task.vote_tree.questions[0]
        a, b = spans[0]
        sure = confident[:, 0]
        root_confusion = np.zeros((b - a, b - a), np.int64)
        np.add.at(root_confusion, (observed[sure, a:b].argmax(1), probs[sure, a:b].argmax(1)), 1)
        metrics["root_confusion_labels"] = root.answers
        metrics["root_confusion"] = root_confusion.tolist()
        names.append(plots.confusion_plot(folder, root_confusion.tolist(), root.answers,
                                          title=f"{root.name}: majority answer (confident)"))
        per_image = np.array([np.abs(probs[i] - observed[i])[
            np.repeat(confident[i], [b - a for a, b in spans])].mean()
            if confident[i].any() else 0.0 for i in range(len(y))])
        worst = np.argsort(-per_image)[:failures]
        caption = [_caption(test.ids, k, f"MAE {per_image[k]:.2f} {root.answers[0][:6]} "
                            f"obs {observed[k, 0]:.2f} pred {probs[k, 0]:.2f}") for k in worst]
    else:  # pragma: no cover - the task kinds are closed
        raise ValueError(f"Unknown task kind {task.kind!r}.")
    names.append(plots.failures_plot(folder, test.x[worst], caption))
    metrics["plots"] = names
    return manifest, metrics


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
    from services.trainer.export import onnx_session
    from services.trainer.publish import build_manifest, library_versions, publish, write_json
    from services.trainer.train import configure_tensorflow
    from services.trainer.heads import output_spec

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
        manifest, metrics = evaluate_release(task, draft, sessions, test, staging,
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

