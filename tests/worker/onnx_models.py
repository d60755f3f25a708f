"""Tiny real ONNX models for worker tests, built with onnx.helper, and a registry publisher.

The regression model is deliberately *not* rotation invariant (a weighted sum of the
pixels), so test-time transforms change its answer and the tests can tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.registry import (
    Calibration,
    InputSpec,
    Manifest,
    Member,
    OutputSpec,
    RegistryWriter,
    sha256_file,
)

SIZE = 8
OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _image_input(size: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])


def weighted_tanh_model(path: Path, *, weights: np.ndarray, bias: float) -> None:
    """image (N,S,S,3) → tanh(sum(image · weights) + bias), shape (N, 1)."""
    size = weights.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["image", "w"], ["p"]),
            helper.make_node("ReduceSum", ["p", "axes"], ["s"], keepdims=0),
            helper.make_node("Unsqueeze", ["s", "one"], ["s1"]),
            helper.make_node("Add", ["s1", "bias"], ["z"]),
            helper.make_node("Tanh", ["z"], ["out"]),
        ],
        "weighted_tanh",
        [_image_input(size)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias"),
        ],
    )
    _save(graph, path)


def linear_model(
    path: Path, *, matrix: np.ndarray, size: int = SIZE, dynamic_width: bool = False
) -> None:
    """image (N,S,S,3) → flatten · matrix, shape (N, K): logits for K outputs.

    With ``dynamic_width`` the output is reshaped by a shape computed at run time, so
    the graph does not reveal K until the model runs.
    """
    nodes = [
        helper.make_node("Reshape", ["image", "flat"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["logits" if not dynamic_width else "y"]),
    ]
    if dynamic_width:
        nodes += [
            helper.make_node("Shape", ["y"], ["yshape"]),
            helper.make_node("Slice", ["yshape", "zero", "one"], ["n"]),
            helper.make_node("Concat", ["n", "minus_one"], ["target"], axis=0),
            helper.make_node("Reshape", ["y", "target"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [_image_input(size)],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["N", "K" if dynamic_width else matrix.shape[1]]
            )
        ],
        initializer=[
            numpy_helper.from_array(np.array([-1, size * size * 3], dtype=np.int64), "flat"),
            numpy_helper.from_array(matrix.astype(np.float32), "w"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        ],
    )
    _save(graph, path)


def batch_of_one_model(path: Path, *, size: int = SIZE) -> None:
    """A model that loads fine but fails at run time for any batch other than 1."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "shape"], ["x"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["out"], keepdims=1),
        ],
        "batch_of_one",
        [_image_input(size)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(np.array([1, size * size * 3], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    _save(graph, path)


def slow_model(path: Path, *, iterations: int, size: int = SIZE) -> None:
    """image → tanh applied ``iterations`` times to its mean, shape (N, 1): a model that
    takes a while (a Loop of ``iterations`` steps), for tests that must catch a job running.
    """
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Tanh", ["x_in"], ["x_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["N", 1]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "one"], ["x0"]),
            helper.make_node("Loop", ["trips", "true", "x0"], ["out"], body=body),
        ],
        "slow",
        [_image_input(size)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ],
    )
    _save(graph, path)


def slow_iterations(seconds: float, *, at_least: int, probe: int = 100_000,
                    size: int = SIZE) -> int:
    """Loop steps for a :func:`slow_model` run of about ``seconds`` on this machine, now,
    and never fewer than ``at_least``: a fixed count ran in 0.4 s on a quiet machine and
    in 2 s on a busy one, and a test that must catch a run in progress needs the time."""
    import tempfile
    import time

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        slow_model(path, iterations=probe, size=size)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        image = np.zeros((1, size, size, 3), np.float32)
        session.run(None, {"image": image})  # first run: allocations, not steps
        started = time.perf_counter()
        session.run(None, {"image": image})
        took = max(time.perf_counter() - started, 1e-6)
    return max(at_least, int(probe * seconds / took))


def ramp_weights(scale: float, size: int = SIZE) -> np.ndarray:
    """Weights growing along rows and columns, so rot180 changes the weighted sum."""
    rows = np.linspace(-1.0, 1.0, size)[:, None, None]
    cols = np.linspace(0.0, 1.0, size)[None, :, None]
    chans = np.array([1.0, 0.5, 0.25])[None, None, :]
    return (scale * (rows + 0.5 * cols) * chans / (size * size)).astype(np.float32)


Builder = Callable[[Path], None]


def publish(
    root: Path,
    members: dict[str, Builder],
    *,
    task: str = "inclination",
    size: int = SIZE,
    activation: str = "tanh_range",
    tta: tuple[str, ...] = ("identity", "rot180"),
    calibration: Calibration | None = None,
) -> Manifest:
    """Build each member with its builder into a staging folder and publish a version."""
    writer = RegistryWriter(root)
    staging = writer.stage(task)
    entries = []
    for name, build in members.items():
        build(staging / f"{name}.onnx")
        entries.append(
            Member(
                name=name,
                file=f"{name}.onnx",
                architecture="tiny",
                sha256=sha256_file(staging / f"{name}.onnx"),
            )
        )
    manifest = Manifest(
        task=task,
        version=1,
        members=entries,
        input=InputSpec(size=size, channels=3, scaling="unit"),
        output=OutputSpec(activation=activation),
        calibration=calibration,
        tta=list(tta),
        training={"note": "tiny test model built with onnx.helper"},
    )
    return writer.publish(staging, manifest)


def regression_members(count: int = 2) -> dict[str, Builder]:
    """``count`` rotation-sensitive regression members with different weights."""
    return {
        f"m{k}": (
            lambda path, k=k: weighted_tanh_model(
                path, weights=ramp_weights(3.0 + 2.0 * k), bias=0.1 * k
            )
        )
        for k in range(count)
    }


def member_file(root: Path, manifest: Manifest, member: int = 0) -> Path:
    return root / manifest.task / str(manifest.version) / manifest.members[member].file


def expected_regression(images: np.ndarray, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """What the worker should answer for :func:`regression_members`, computed with numpy.

    Returns
    -------
    degrees
        ``(M, 2, N)``: each member's degrees under identity and rot180, uncorrected.
    values
        ``(M, N)``: each member's TTA median, bias-corrected and clipped to 45-90.
    """
    assert manifest.tta == ["identity", "rot180"]
    images = images.astype(np.float64)
    rotated = images[:, ::-1, ::-1, :]
    degrees = []
    for k in range(len(manifest.members)):
        w, b = ramp_weights(3.0 + 2.0 * k).astype(np.float64), 0.1 * k
        per_tta = [np.tanh((x * w).sum(axis=(1, 2, 3)) + b) for x in (images, rotated)]
        degrees.append([45.0 + 45.0 * (t + 1.0) / 2.0 for t in per_tta])
    degrees_arr = np.array(degrees)
    values = np.median(degrees_arr, axis=1)
    if manifest.calibration is not None:
        cal = manifest.calibration
        values = (values + cal.bias_b) / (1.0 - cal.bias_m)
    return degrees_arr, np.clip(values, 45.0, 90.0)
