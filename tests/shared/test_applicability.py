"""The applicability rules of a task definition read against other tasks' answers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.applicability import apply_verdict, judge
from shared.schemas import QuestionResult, TaskResult
from shared.taskdefs import ApplicabilityRule, TaskDefinition, get_task_definition

INCLINATION = get_task_definition("inclination")


def object_type(top: str, p: float) -> TaskResult:
    labels = get_task_definition("object-type").output_names
    rest = (1.0 - p) / (len(labels) - 1)
    probs = {label: (p if label == top else rest) for label in labels}
    return TaskResult(task="object-type", kind="classification", model_version=1, value=top,
                      probabilities=probs, members=[])


def rejection(**probs: float) -> TaskResult:
    labels = get_task_definition("rejection").output_names
    full = {label: probs.get(label, 0.05) for label in labels}
    return TaskResult(task="rejection", kind="multilabel", model_version=1,
                      value=full["reject"], probabilities=full, members=[])


def morphology(smooth: float) -> TaskResult:
    root = QuestionResult(reached=1.0, fractions={
        "smooth": smooth, "featured-or-disk": 0.95 - smooth, "artifact": 0.05},
        spread={"smooth": 0.0, "featured-or-disk": 0.0, "artifact": 0.0})
    return TaskResult(task="morphology", kind="vote_tree", model_version=1,
                      questions={"smooth-or-featured": root}, members=[])


def regression() -> TaskResult:
    return TaskResult(task="inclination", kind="regression", model_version=1, value=60.0,
                      members=[])


def test_a_good_disk_applies_and_records_what_was_read() -> None:
    verdict = judge(INCLINATION, {"object-type": object_type("galaxy", 0.9),
                                  "rejection": rejection(), "morphology": morphology(0.2)})
    assert verdict.applicable is True and verdict.reasons == [] and verdict.missing == []
    assert verdict.evidence["rejection:face_on"] == pytest.approx(0.05)
    assert verdict.evidence["morphology:smooth-or-featured:smooth"] == pytest.approx(0.2)
    answer = apply_verdict(regression(), verdict)
    assert answer.applicable is True and answer.applicable_reason is None


@pytest.mark.parametrize(("answers", "words"), [
    ({"object-type": object_type("emission_nebula", 0.95)}, "emission nebula (95 %)"),
    ({"rejection": rejection(face_on=0.8)}, "face-on (80 %)"),
    ({"rejection": rejection(low_snr=0.9)}, "too little signal"),
    ({"morphology": morphology(0.8)}, "smooth (80 %"),
])
def test_each_kind_of_non_disk_is_flagged_with_its_reason(answers: dict, words: str) -> None:
    verdict = judge(INCLINATION, answers)
    assert verdict.applicable is False
    assert any(words in reason for reason in verdict.reasons), verdict.reasons
    answer = apply_verdict(regression(), verdict)
    assert answer.applicable is False and words in (answer.applicable_reason or "")


def test_an_unsure_object_type_or_missing_evidence_does_not_decide() -> None:
    # A top class other than galaxy below the threshold does not fire.
    assert judge(INCLINATION, {"object-type": object_type("open_cluster", 0.6)}).applicable
    verdict = judge(INCLINATION, {})
    assert verdict.applicable is None
    assert set(verdict.missing) == {"object-type", "rejection", "morphology"}
    assert apply_verdict(regression(), verdict).applicable is None


def test_rules_are_validated_as_data() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ApplicabilityRule(task="rejection", at_least=0.5, reason="r")
    with pytest.raises(ValidationError, match="own answer"):
        TaskDefinition(name="x", title="x", description="x", kind="regression", range=(0, 1),
                       applicability=[{"task": "x", "output": "a", "at_least": 0.5,
                                       "reason": "r"}])
