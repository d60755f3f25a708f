"""Keras → ONNX export with tf2onnx, and the parity check that guards it.

The exported graph takes one float32 NHWC input named ``image`` (the manifest's
``InputSpec.input_name``) and returns the head output the manifest's ``OutputSpec``
describes (tanh for regression, probabilities, Dirichlet logits); the worker
applies the ``OutputSpec`` activation. MC-dropout members take a second input,
``mc_mask`` ``(N, units)`` (:class:`shared.registry.McDropout`). A model is
published only if ONNX Runtime reproduces Keras on held-out images within a
tolerance — for MC-dropout members with an all-ones mask and with a random mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.members import Ensemble, MemberRunner
from shared.registry import Manifest, McDropout

__all__ = [
    "ParityError",
    "DEFAULT_TOLERANCE",
    "export_onnx",
    "export_member",
    "onnx_session",
    "onnx_runners",
    "onnx_ensemble",
    "onnx_predict",
    "keras_predict",
    "parity_masks",
    "check_parity",
    "member_parity",
]

DEFAULT_TOLERANCE = 1e-4
OPSET = 17


class ParityError(RuntimeError):
    """ONNX Runtime and Keras disagree on the same inputs beyond the tolerance."""


def export_onnx(model: Any, path: Path, *, input_name: str = "image", opset: int = OPSET,
                mc: McDropout | None = None) -> Path:
    """Export a Keras model to ``path`` as ONNX with a dynamic batch dimension.

    Inference mode only: a graph traced with ``training=True`` does not export
    (dropout's stateless random op), so MC dropout lives outside the graph: with
    ``mc`` the model takes ``[image, mask]`` and the ONNX graph gets a second input
    ``mc.mask_input`` of shape ``(N, mc.units)``.
    """
    import tensorflow as tf
    import tf2onnx

    _, size, _, channels = model.inputs[0].shape
    signature = [tf.TensorSpec((None, size, size, channels), tf.float32, name=input_name)]
    if mc is not None:
        signature.append(tf.TensorSpec((None, mc.units), tf.float32, name=mc.mask_input))
    path = Path(path)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset,
                               output_path=str(path))
    return path


def export_member(member: Any, path: Path) -> Path:
    """Export a :class:`services.trainer.fit.FittedMember`: input ``image`` (+ ``mc_mask``)."""
    return export_onnx(member.models.export, path, mc=member.models.mc)


def onnx_session(path: Path, *, threads: int = 2) -> Any:
    """A CPU ONNX Runtime session with a capped thread pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runners(manifest: Manifest, folder: Path, *, threads: int = 2) -> list[MemberRunner]:
    """A CPU session per member file of ``manifest`` in ``folder``, as runners for
    :mod:`shared.members`."""
    return [MemberRunner(m.name, onnx_session(Path(folder) / m.file, threads=threads),
                         manifest.input.input_name, manifest.output.output_name)
            for m in manifest.members]


def onnx_ensemble(manifest: Manifest, folder: Path, *, threads: int = 2) -> Ensemble:
    """The members of ``manifest`` in ``folder`` as the worker runs them: fused into one
    session (:func:`shared.fused.fuse_version`, the worker's own fast path), else one
    session each."""
    import onnx
    import onnxruntime as ort

    from shared.fused import fuse_version

    runners = onnx_runners(manifest, folder, threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    fused = fuse_version(
        manifest,
        [onnx.load(str(Path(folder) / m.file)) for m in manifest.members],
        lambda graph: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]),
        runners,
    )
    return fused if fused is not None else runners


def onnx_predict(session: Any, x: np.ndarray, *, batch_size: int = 256,
                 mask: np.ndarray | None = None, mask_input: str = "mc_mask") -> np.ndarray:
    """Run a session over ``x`` (and its MC-dropout ``mask``) in batches; first output, float32."""
    name = session.get_inputs()[0].name
    outputs = []
    for i in range(0, len(x), batch_size):
        feeds = {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)}
        if mask is not None:
            feeds[mask_input] = np.ascontiguousarray(mask[i : i + batch_size], dtype=np.float32)
        outputs.append(session.run(None, feeds)[0])
    return np.concatenate(outputs).astype(np.float32)


def keras_predict(model: Any, x: np.ndarray, *, batch_size: int = 256,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """Inference-mode Keras outputs (``model(x, training=False)``, faster than ``predict``)."""
    outputs = [
        np.asarray(model(x[i : i + batch_size] if mask is None else
                         [x[i : i + batch_size], mask[i : i + batch_size]], training=False))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def parity_masks(mc: McDropout, rows: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The masks a parity check tries: all ones, and scaled Bernoulli as the worker draws."""
    keep = 1.0 - mc.rate
    rng = np.random.default_rng(seed)
    return {"ones": np.ones((rows, mc.units), np.float32),
            "random": (rng.random((rows, mc.units)) < keep).astype(np.float32) / keep}


def check_parity(
    model: Any,
    onnx_path: Path,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int = 2,
    mc: McDropout | None = None,
) -> float:
    """Compare Keras and ONNX Runtime on ``x``; return the max absolute difference.

    With ``mc`` (a model taking ``[image, mask]``) both are compared with an all-ones
    mask and with a random mask (:func:`parity_masks`).

    Raises
    ------
    ParityError
        If the outputs' shapes differ or any element differs by more than
        ``tolerance * (1 + |Keras output|)``.
    """
    session = onnx_session(onnx_path, threads=threads)
    masks: dict[str, np.ndarray | None] = (
        {"": None} if mc is None else dict(parity_masks(mc, len(x))))
    worst = 0.0
    for label, mask in masks.items():
        expected = keras_predict(model, x, mask=mask)
        got = onnx_predict(session, x, mask=mask, mask_input=mc.mask_input if mc else "")
        where = f" (MC mask {label})" if label else ""
        if expected.shape != got.shape:
            raise ParityError(
                f"{Path(onnx_path).name}: ONNX output shape {got.shape} != Keras "
                f"{expected.shape}{where}."
            )
        diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        # numpy.allclose's rule with rtol = atol: float32 rounding grows with the output's
        # magnitude, and Dirichlet logits reach about +-20 where 1e-4 flat is too tight.
        within = np.abs(expected - got) <= tolerance * (1.0 + np.abs(expected))
        if not np.isfinite(diff) or not bool(np.all(within)):
            raise ParityError(
                f"{Path(onnx_path).name}: ONNX Runtime differs from Keras by up to {diff:.3g} "
                f"on {len(x)} held-out images (tolerance {tolerance:g} + {tolerance:g} x "
                f"|Keras output|){where}; not publishing."
            )
        worst = max(worst, diff)
    return worst


def member_parity(member: Any, path: Path, x: np.ndarray, *, tolerance: float,
                  threads: int = 2) -> float:
    """:func:`check_parity` of a :class:`services.trainer.fit.FittedMember`'s export model."""
    return check_parity(member.models.export, path, x, tolerance=tolerance, threads=threads,
                        mc=member.models.mc)
