"""Keras → ONNX export with tf2onnx, and the parity check that guards it.

The exported graph takes one float32 NHWC input named ``image`` (the manifest's
``InputSpec.input_name``) and returns the raw head output (tanh for regression);
the worker applies the manifest's ``OutputSpec`` activation. A model is published
only if ONNX Runtime reproduces Keras on held-out images within a tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ParityError",
    "DEFAULT_TOLERANCE",
    "export_onnx",
    "onnx_session",
    "onnx_predict",
    "keras_predict",
    "check_parity",
]

DEFAULT_TOLERANCE = 1e-4
OPSET = 17


class ParityError(RuntimeError):
    """ONNX Runtime and Keras disagree on the same inputs beyond the tolerance."""


def export_onnx(model: Any, path: Path, *, input_name: str = "image", opset: int = OPSET) -> Path:
    """Export a Keras model to ``path`` as ONNX with a dynamic batch dimension.

    Inference mode only: a graph traced with ``training=True`` does not export
    (dropout's stateless random op), so MC dropout would live outside the graph.
    """
    import tensorflow as tf
    import tf2onnx

    _, size, _, channels = model.input_shape
    signature = [tf.TensorSpec((None, size, size, channels), tf.float32, name=input_name)]
    path = Path(path)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset,
                               output_path=str(path))
    return path


def onnx_session(path: Path, *, threads: int = 2) -> Any:
    """A CPU ONNX Runtime session with a capped thread pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(session: Any, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Run a session over ``x`` in batches; returns the first output, float32."""
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def keras_predict(model: Any, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Inference-mode Keras outputs (``model(x, training=False)``, faster than ``predict``)."""
    outputs = [
        np.asarray(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def check_parity(
    model: Any,
    onnx_path: Path,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int = 2,
) -> float:
    """Compare Keras and ONNX Runtime on ``x``; return the max absolute difference.

    Raises
    ------
    ParityError
        If the outputs' shapes differ or any element differs by more than ``tolerance``.
    """
    expected = keras_predict(model, x)
    got = onnx_predict(onnx_session(onnx_path, threads=threads), x)
    if expected.shape != got.shape:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX output shape {got.shape} != Keras {expected.shape}."
        )
    diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime differs from Keras by up to {diff:.3g} "
            f"on {len(x)} held-out images (tolerance {tolerance:g}); not publishing."
        )
    return diff
