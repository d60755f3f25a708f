"""Tiny but real ONNX models, built with onnx.helper, published into a real registry.

They let API and worker tests run real ONNX Runtime sessions without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from shared.registry import InputSpec, Manifest, Member, OutputSpec, RegistryWriter, sha256_file


def mean_tanh_model(path: Path, *, size: int, gain: float, bias: float) -> None:
    """Write an ONNX model: image (N,size,size,3) → tanh(gain·mean(image) + bias), shape (N,1)."""
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Mul", ["m1", "gain"], ["g"]),
        helper.make_node("Add", ["g", "bias"], ["z"]),
        helper.make_node("Tanh", ["z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean_tanh",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("gain", TensorProto.FLOAT, [], [gain]),
            helper.make_tensor("bias", TensorProto.FLOAT, [], [bias]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def publish_tiny_regression(
    root: Path, *, task: str = "inclination", size: int = 8, members: int = 3
) -> Manifest:
    """Publish a real registry version of ``members`` tiny regression models."""
    writer = RegistryWriter(root)
    staging = writer.stage(task)
    entries = []
    for k in range(members):
        name = f"m{k}"
        mean_tanh_model(staging / f"{name}.onnx", size=size, gain=2.0 + k, bias=-1.0 + 0.1 * k)
        entries.append(
            Member(
                name=name,
                file=f"{name}.onnx",
                architecture="mean-tanh",
                sha256=sha256_file(staging / f"{name}.onnx"),
            )
        )
    manifest = Manifest(
        task=task,
        version=1,
        members=entries,
        input=InputSpec(size=size, channels=3, scaling="unit"),
        output=OutputSpec(activation="tanh_range"),
        tta=["identity", "rot180"],
        metrics={},
        training={"note": "tiny test model built with onnx.helper"},
    )
    return writer.publish(staging, manifest)
