"""Raw member outputs → served answers, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from shared.ensemble import regression_members, summarize
from shared.registry import Calibration, InputSpec, Manifest, Member, OutputSpec
from shared.taskdefs import TaskDefinition, VoteTreeSchema, get_task_definition


def _manifest(n: int, **kw: object) -> Manifest:
    members = [Member(name=f"m{i}", file=f"m{i}.onnx", architecture="a", sha256="0") for i in range(n)]
    return Manifest(task="t", version=3, members=members, input=InputSpec(size=8), **kw)  # type: ignore[arg-type]


def test_regression_tta_median_calibration_and_summary() -> None:
    task = get_task_definition("inclination")
    manifest = _manifest(
        3, output=OutputSpec(activation="tanh_range"), calibration=Calibration(bias_m=0.1, bias_b=-2.0)
    )
    # (S=2 transforms, N=1 image, K=1): tanh outputs
    raw = {"m0": np.array([[[0.0]], [[0.2]]]), "m1": np.array([[[0.1]], [[0.1]]]), "m2": np.array([[[0.4]], [[0.0]]])}
    to_deg = lambda p: 45 + 45 * (p + 1) / 2  # noqa: E731
    expected = [(np.median([to_deg(a), to_deg(b)]) - 2.0) / 0.9 for a, b in ([0, 0.2], [0.1, 0.1], [0.4, 0.0])]
    values, samples = regression_members(task, manifest, raw)
    np.testing.assert_allclose(values[:, 0], expected)
    [result] = summarize(task, manifest, raw)
    assert result.value == pytest.approx(np.median(expected))
    assert result.summary["stdev"] == pytest.approx(np.std(expected, ddof=1))
    assert [m.value for m in result.members] == pytest.approx(expected)
    assert result.members[0].tta_values == pytest.approx([to_deg(0.0), to_deg(0.2)])
    assert result.model_version == 3
    # The spread of every member x transform value, bias-corrected; no error model, no error.
    pooled = [(to_deg(p) - 2.0) / 0.9 for p in (0.0, 0.2, 0.1, 0.1, 0.4, 0.0)]
    assert result.summary["spread"] == pytest.approx(np.std(pooled, ddof=1))
    assert "error" not in result.summary


def test_regression_error_is_the_calibrated_error_model() -> None:
    task = get_task_definition("inclination")
    calibration = Calibration(bias_m=0.0, bias_b=0.0, error_floor=1.5, error_spread_scale=2.0)
    manifest = _manifest(2, output=OutputSpec(activation="identity"), calibration=calibration)
    raw = {"m0": np.array([[[60.0]], [[62.0]]]), "m1": np.array([[[61.0]], [[65.0]]])}
    [result] = summarize(task, manifest, raw)
    spread = np.std([60.0, 62.0, 61.0, 65.0], ddof=1)
    assert result.summary["spread"] == pytest.approx(spread)
    assert result.summary["error"] == pytest.approx(np.hypot(1.5, 2.0 * spread))


def test_regression_is_clipped_to_the_served_range() -> None:
    task = get_task_definition("inclination")
    manifest = _manifest(1, output=OutputSpec(activation="identity"))
    values, _ = regression_members(task, manifest, {"m0": np.array([[[120.0], [10.0]]])})
    assert values.tolist() == [[90.0, 45.0]]


def test_classification_probabilities_and_spread() -> None:
    task = TaskDefinition(name="kind", title="k", description="d", kind="classification", labels=["a", "b"])
    manifest = _manifest(2, output=OutputSpec(activation="softmax"))
    raw = {"m0": np.log(np.array([[[0.8, 0.2]]])), "m1": np.log(np.array([[[0.6, 0.4]]]))}
    [result] = summarize(task, manifest, raw)
    assert result.value == "a"
    assert result.probabilities["a"] == pytest.approx(0.7)
    assert result.spread["a"] == pytest.approx(np.std([0.8, 0.6], ddof=1))


def test_vote_tree_fractions_and_reach() -> None:
    schema = VoteTreeSchema.model_validate(
        {
            "questions": [
                {"name": "smooth", "answers": ["smooth", "featured"]},
                {"name": "bar", "answers": ["yes", "no"], "depends_on": "smooth:featured"},
            ]
        }
    )
    task = TaskDefinition(name="gz", title="g", description="d", kind="vote_tree", vote_tree=schema)
    manifest = _manifest(1, output=OutputSpec(activation="identity"))
    raw = {"m0": np.array([[[1.0, 3.0, 2.0, 2.0]]])}  # concentrations
    [result] = summarize(task, manifest, raw)
    assert result.questions["smooth"].fractions == pytest.approx({"smooth": 0.25, "featured": 0.75})
    assert result.questions["bar"].reached == pytest.approx(0.75)
    assert result.questions["bar"].fractions["yes"] == pytest.approx(0.5)


def test_vote_tree_schema_rejects_dangling_links() -> None:
    with pytest.raises(ValueError, match="depends on"):
        VoteTreeSchema.model_validate(
            {"questions": [{"name": "q", "answers": ["a", "b"], "depends_on": "nope:x"}]}
        )


def test_a_top_class_the_task_does_not_support_carries_a_caveat() -> None:
    task = TaskDefinition(name="kind", title="k", description="d", kind="classification",
                          labels=["galaxy", "rare"], unsupported_classes=["rare"])
    manifest = _manifest(1, output=OutputSpec(activation="identity"))
    rare, galaxy = summarize(task, manifest, {"m0": np.array([[[0.3, 0.7], [0.9, 0.1]]])})
    assert rare.value == "rare" and "unsupported" in rare.caveat and "galaxy (30 %)" in rare.caveat
    assert galaxy.value == "galaxy" and galaxy.caveat is None
