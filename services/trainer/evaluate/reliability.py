"""Reliability of predicted probabilities: binned confidence vs observed frequency, and the ECE."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["reliability"]


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Reliability curve (mean confidence vs observed frequency per bin) and the ECE."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, freq = float(confidence[sel].mean()), float(correct[sel].mean())
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                         "confidence": conf, "frequency": freq})
            ece += sel.mean() * abs(conf - freq)
    return {"bins": rows, "ece": float(ece)}
