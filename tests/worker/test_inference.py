"""Inference: every member under every test-time transform, batched, summarised per task kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.worker.inference import predict
from services.worker.sessions import SessionCache
from shared.errors import ModelIntegrityError
from shared.members import run_members
from shared.registry import Manifest, RegistryReader
from shared.taskdefs import TaskDefinition, get_task_definition
from tests.worker.onnx_models import SIZE, expected_regression, linear_model, publish

INCLINATION = get_task_definition("inclination")
TOY_CLASSES = TaskDefinition(
    name="toy-classes",
    title="Toy classes",
    description="Three mutually exclusive classes, for tests.",
    kind="classification",
    labels=["spiral", "elliptical", "irregular"],
)
TOY_LABELS = TaskDefinition(
    name="toy-labels",
    title="Toy labels",
    description="Three independent labels, for tests.",
    kind="multilabel",
    labels=["bar", "ring", "merger"],
)
DEFINITIONS = {t.name: t for t in (INCLINATION, TOY_CLASSES, TOY_LABELS)}


def cache_for(root: Path) -> SessionCache:
    return SessionCache(
        RegistryReader(root),
        providers=["CPUExecutionProvider"],
        intra_op_threads=1,
        task_definitions=DEFINITIONS,
    )


def test_regression_matches_a_hand_computation(
    registry_root: Path, regression_v1: Manifest, images: np.ndarray
) -> None:
    model = cache_for(registry_root).get("inclination")

    results = predict(INCLINATION, model, images, max_batch_size=3)  # 10 rows in 4 chunks

    degrees, values = expected_regression(images, regression_v1)
    assert len(results) == len(images)
    for i, result in enumerate(results):
        assert (result.task, result.kind, result.model_version) == ("inclination", "regression", 1)
        assert result.tta == ["identity", "rot180"]
        assert [m.member for m in result.members] == ["m0", "m1"]
        for k, member in enumerate(result.members):
            assert member.tta_values == pytest.approx(degrees[k, :, i], rel=1e-5)
            assert member.value == pytest.approx(values[k, i], rel=1e-5)
        assert result.value == pytest.approx(np.median(values[:, i]), rel=1e-5)
        assert result.summary["mean"] == pytest.approx(values[:, i].mean(), rel=1e-5)
        assert result.summary["stdev"] == pytest.approx(values[:, i].std(ddof=1), rel=1e-4)
        assert result.summary["min"] == pytest.approx(values[:, i].min(), rel=1e-5)
        assert result.calibration == regression_v1.calibration
    # The transforms really differ for this model, so both were run.
    assert not np.allclose(degrees[:, 0], degrees[:, 1])


def test_batch_size_does_not_change_the_answer(
    registry_root: Path, regression_v1: Manifest, images: np.ndarray
) -> None:
    model = cache_for(registry_root).get("inclination")

    one = run_members(model.manifest, model.runners(), images, max_batch_size=1)
    many = run_members(model.manifest, model.runners(), images, max_batch_size=64)

    assert set(one) == {"m0", "m1"}
    for name in one:
        assert one[name].shape == (2, len(images), 1)
        np.testing.assert_allclose(one[name], many[name], rtol=1e-6)


@pytest.mark.parametrize(
    ("task", "activation"), [(TOY_CLASSES, "softmax"), (TOY_LABELS, "sigmoid")]
)
def test_classifiers_average_members_and_transforms(
    registry_root: Path, images: np.ndarray, task: TaskDefinition, activation: str
) -> None:
    rng = np.random.default_rng(3)
    matrices = [rng.normal(scale=0.3, size=(SIZE * SIZE * 3, 3)) for _ in range(2)]
    manifest = publish(
        registry_root,
        {f"m{k}": (lambda p, m=m: linear_model(p, matrix=m)) for k, m in enumerate(matrices)},
        task=task.name,
        activation=activation,
        tta=("identity", "flip_lr"),
    )
    model = cache_for(registry_root).get(task.name)

    results = predict(task, model, images, max_batch_size=4)

    flat = [images.reshape(len(images), -1), images[:, :, ::-1, :].reshape(len(images), -1)]
    logits = np.array([[x @ m.astype(np.float32) for x in flat] for m in matrices])  # (M, S, N, K)
    if activation == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    mean = probs.mean(axis=(0, 1))
    spread = probs.reshape(-1, len(images), 3).std(axis=0, ddof=1)
    for i, result in enumerate(results):
        assert result.model_version == manifest.version
        assert list(result.probabilities) == task.labels
        assert list(result.probabilities.values()) == pytest.approx(mean[i], rel=1e-4)
        assert list(result.spread.values()) == pytest.approx(spread[i], rel=1e-3, abs=1e-6)
        member0 = result.members[0].probabilities
        assert list(member0.values()) == pytest.approx(probs[0, :, i].mean(axis=0), rel=1e-4)
        if task.kind == "classification":
            assert result.value == task.labels[int(np.argmax(mean[i]))]
        else:
            assert result.value == pytest.approx(mean[i, 0], rel=1e-4)


def test_outputs_of_the_wrong_width_are_refused(registry_root: Path, images: np.ndarray) -> None:
    # A 3-column model published for a 1-column regression task. Declared in the graph,
    # the width is refused at load time; left dynamic, at run time.
    three = np.ones((SIZE * SIZE * 3, 3))
    publish(registry_root, {"m0": lambda p: linear_model(p, matrix=three)})
    with pytest.raises(ModelIntegrityError, match="gives 3 columns; the task has 1"):
        cache_for(registry_root).get("inclination", 1)

    publish(registry_root, {"m0": lambda p: linear_model(p, matrix=three, dynamic_width=True)})
    model = cache_for(registry_root).get("inclination", 2)
    with pytest.raises(ModelIntegrityError, match="gives 3 outputs per image"):
        predict(INCLINATION, model, images, max_batch_size=8)


def test_no_images_no_answers(registry_root: Path, regression_v1: Manifest) -> None:
    model = cache_for(registry_root).get("inclination")
    empty = np.zeros((0, SIZE, SIZE, 3), dtype=np.float32)
    assert predict(INCLINATION, model, empty, max_batch_size=8) == []
