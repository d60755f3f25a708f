"""Evaluation plots written into a version folder (PNG, matplotlib's Agg backend).

Confusion matrices, reliability (calibration) curves, predicted vs observed vote
fractions, per-label precision/recall bars, predicted vs true values and residuals
(regression) and a grid of the worst failures. Each function writes one file and
returns its name, for ``metrics.json``'s ``plots``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["confusion_plot", "reliability_plot", "vote_fraction_plot", "label_bars_plot",
           "regression_plots", "failures_plot", "caption"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_plot(folder: Path, confusion: list[list[int]], labels: list[str], *,
                   name: str = "confusion.png", title: str = "Confusion matrix") -> str:
    """Row-normalised confusion matrix (rows: truth) with the counts written in the cells."""
    plt = _plt()
    counts = np.asarray(confusion, dtype=np.float64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = 2.5 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=90)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(Path(folder) / name)
    plt.close(fig)
    return name


def reliability_plot(folder: Path, curves: dict[str, dict[str, Any]], *,
                     name: str = "reliability.png", title: str = "Reliability") -> str:
    """Mean predicted probability vs observed frequency per bin, one line per curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.6), dpi=90)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="perfectly calibrated")
    for label, curve in curves.items():
        bins = curve["bins"]
        ax.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], marker="o",
                ms=3, label=f"{label} (ECE {curve['ece']:.3f})")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1),
           ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(Path(folder) / name)
    plt.close(fig)
    return name


def vote_fraction_plot(folder: Path, questions: list[tuple[str, list[str], int]],
                       predicted: np.ndarray, observed: np.ndarray, confident: np.ndarray, *,
                       name: str = "vote_fractions.png") -> str:
    """Predicted vs observed vote fraction per question; confident answers highlighted.

    ``questions`` lists ``(name, answers, first column)``; ``confident`` is ``(N, Q)``.
    """
    plt = _plt()
    cols = min(3, len(questions))
    rows = int(np.ceil(len(questions) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), dpi=80, squeeze=False)
    for k, (qname, answers, start) in enumerate(questions):
        ax = axes[k // cols][k % cols]
        for j, answer in enumerate(answers):
            col = start + j
            sel = confident[:, k]
            ax.scatter(observed[~sel, col], predicted[~sel, col], s=2, alpha=0.15, color="grey")
            ax.scatter(observed[sel, col], predicted[sel, col], s=3, alpha=0.5, label=answer)
        ax.plot([0, 1], [0, 1], color="black", lw=0.7, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=qname, xlabel="observed fraction",
               ylabel="predicted fraction")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, loc="upper left", markerscale=3)
    for k in range(len(questions), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("Vote fractions (colour: confidently answered; grey: others)", fontsize=9)
    fig.tight_layout()
    fig.savefig(Path(folder) / name)
    plt.close(fig)
    return name


def label_bars_plot(folder: Path, per_label: dict[str, dict[str, Any]], *,
                    name: str = "labels.png") -> str:
    """Precision, recall and accuracy per label (threshold 0.5) with the label's support."""
    plt = _plt()
    labels = list(per_label)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 4.0), dpi=90)
    for offset, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "accuracy")):
        values = [per_label[lab][key] if per_label[lab][key] is not None else 0.0 for lab in labels]
        ax.bar(x + offset, values, width=0.26, label=key)
    ax.set_xticks(x, [f"{lab}\n(n+={per_label[lab]['support']})" for lab in labels], fontsize=7)
    ax.set(ylim=(0, 1.05), title="Per-label precision / recall / accuracy (p >= 0.5)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(Path(folder) / name)
    plt.close(fig)
    return name


def regression_plots(folder: Path, truth: np.ndarray, pred: np.ndarray, raw: np.ndarray, *,
                     bias: tuple[float, float] | None, span: tuple[float, float], name: str,
                     unit: str | None, baseline: tuple[np.ndarray, np.ndarray] | None = None,
                     title: str = "Held-out test set") -> list[str]:
    """``pred_vs_true.png`` (served, uncorrected, the fitted bias line) and ``residuals.png``.

    ``baseline`` is ``(truth, estimate)`` of a classical estimate to plot beside.
    """
    plt = _plt()
    lo, hi = span
    grid = np.linspace(lo, hi, 50)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=90)
    ax.scatter(truth, raw, s=4, alpha=0.35, color="tab:gray", label="ensemble, uncorrected")
    ax.scatter(truth, pred, s=4, alpha=0.5, color="tab:blue", label="served")
    if bias is not None:
        m, b = bias
        ax.plot(grid, (1.0 - m) * grid - b, color="tab:red",
                label=f"fitted bias: i_p = (1-m) i_m - b, m={m:.3f}, b={b:.2f}")
    ax.plot(grid, grid, color="black", lw=0.8, ls="--", label="identity")
    ax.set(xlabel=f"true {name} [{unit}]", ylabel=f"predicted [{unit}]",
           xlim=(lo - 1, hi + 1), ylim=(lo - 1, hi + 1), title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(Path(folder) / "pred_vs_true.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=90)
    if baseline is not None:
        ax.scatter(baseline[0], baseline[1] - baseline[0], s=4, alpha=0.3, color="tab:orange",
                   label="axis-ratio baseline (q0 = 0.2)")
    ax.scatter(truth, pred - truth, s=4, alpha=0.5, color="tab:blue", label="served ensemble")
    ax.axhline(0.0, color="black", lw=0.8)
    limit = 20.0 * (hi - lo) / 45.0
    ax.set(xlabel=f"true {name} [{unit}]", ylabel=f"predicted - true [{unit}]",
           ylim=(-limit, limit), title="Residuals vs truth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(folder) / "residuals.png")
    plt.close(fig)
    return ["pred_vs_true.png", "residuals.png"]


def caption(ids: list[str], k: int, text: str) -> str:
    """A failure's caption: the end of its id, then ``text``."""
    return f"{ids[k][-26:]}\n{text}"


def failures_plot(folder: Path, images: np.ndarray, captions: list[str], *,
                  name: str = "failures.png", title: str = "Worst failures") -> str:
    """A grid of images (``(n, S, S, C)`` in [0, 1] or [-1, 1]) with their captions."""
    plt = _plt()
    n = len(images)
    cols = min(4, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), dpi=80, squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        ax.axis("off")
        if k < n:
            image = np.asarray(images[k], np.float32)
            if image.min() < 0:
                image = (image + 1.0) / 2.0
            ax.imshow(np.clip(image, 0, 1).squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
            ax.set_title(captions[k], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(Path(folder) / name)
    plt.close(fig)
    return name
