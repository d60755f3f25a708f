"""MC dropout served by ONNX Runtime: members take a mask input; the worker samples masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from services.worker.sessions import SessionCache
from shared.errors import ModelIntegrityError
from shared.members import run_members
from shared.registry import (
    InputSpec,
    Manifest,
    McDropout,
    Member,
    OutputSpec,
    RegistryReader,
    RegistryWriter,
    sha256_file,
)

SIZE, UNITS = 8, 16
W = np.random.default_rng(1).normal(size=(3, UNITS)).astype(np.float32)
V = np.random.default_rng(2).normal(size=(UNITS, 1)).astype(np.float32)


def _masked_linear(path: Path) -> None:
    """image → channel means → W → × mask → V: linear, so E[masked] = unmasked."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "W"], ["f"]),
            helper.make_node("Mul", ["f", "mc_mask"], ["fm"]),
            helper.make_node("MatMul", ["fm", "V"], ["out"]),
        ],
        "masked",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3]),
            helper.make_tensor_value_info("mc_mask", TensorProto.FLOAT, ["N", UNITS]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            onnx.numpy_helper.from_array(W, "W"),
            onnx.numpy_helper.from_array(V, "V"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def _publish(root: Path, samples: int, *, units: int = UNITS) -> None:
    writer = RegistryWriter(root)
    staging = writer.stage("inclination")
    _masked_linear(staging / "m0.onnx")
    manifest = Manifest(
        task="inclination",
        version=1,
        members=[Member(name="m0", file="m0.onnx", architecture="masked", sha256=sha256_file(staging / "m0.onnx"))],
        input=InputSpec(size=SIZE),
        output=OutputSpec(activation="identity", mc_dropout=McDropout(samples=samples, rate=0.25, units=units)),
        tta=["identity", "rot180"],
    )
    writer.publish(staging, manifest)


def _model(root: Path):  # type: ignore[no-untyped-def]
    cache = SessionCache(RegistryReader(root), providers=["CPUExecutionProvider"], intra_op_threads=1)
    return cache.get("inclination")


def _run(model, images: np.ndarray, max_batch_size: int = 64) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return run_members(model.manifest, model.runners(), images, max_batch_size=max_batch_size)


def test_samples_vary_reproducibly_and_average_to_the_deterministic_output(registry_root: Path) -> None:
    _publish(registry_root, samples=256)
    model = _model(registry_root)
    images = np.random.default_rng(3).random((2, SIZE, SIZE, 3), dtype=np.float32)
    raw = _run(model, images)["m0"]
    assert raw.shape == (2 * 256, 2, 1)  # transforms x samples, images, outputs
    assert raw[:, 0, 0].std() > 0.01  # the masks really change the answer
    np.testing.assert_array_equal(raw, _run(model, images)["m0"])
    exact = images.mean(axis=(1, 2)) @ W @ V
    np.testing.assert_allclose(raw.mean(axis=0), exact, atol=0.15 * np.abs(exact).max() + 0.05)
    # An image's answer does not depend on the batch it came in.
    alone = _run(model, images[1:])["m0"]
    np.testing.assert_allclose(alone[:, 0], raw[:, 1], rtol=1e-6)
    assert not np.array_equal(raw[:, 0], raw[:, 1])


def test_a_member_whose_mask_input_does_not_match_the_manifest_is_refused(registry_root: Path) -> None:
    _publish(registry_root, samples=4, units=UNITS + 1)
    with pytest.raises(ModelIntegrityError, match="mask"):
        _model(registry_root)


def test_the_committed_morphology_default_samples_its_dropout_masks() -> None:
    from shared.settings import REPO_ROOT

    cache = SessionCache(RegistryReader(REPO_ROOT / "models"), providers=["CPUExecutionProvider"],
                         intra_op_threads=1)
    model = cache.get("morphology")
    mc = model.manifest.output.mc_dropout
    assert mc is not None and mc.samples > 1
    images = np.random.default_rng(4).random((1, model.manifest.input.size,
                                              model.manifest.input.size, 3), dtype=np.float32)
    for name, raw in _run(model, images).items():
        per_transform = raw.reshape(len(model.manifest.tta), mc.samples, -1)
        # Within one transform, every sample saw its own mask and answered differently.
        assert (per_transform.std(axis=1) > 1e-4).any(), name
