"""Whether an answer applies to its image, judged from other tasks' answers in the same job.

An inclination of a nebula, a cluster, an elliptical, a face-on spiral or an empty
field is a number that means nothing. A task definition states when its answer does
not apply as :class:`~shared.taskdefs.ApplicabilityRule` data (read by clients and the
page too); the worker computes the evidence tasks' answers in the same job — asked for
or not — and :func:`judge` reads the rules against them. Nothing here runs a model, so
the trainer's bench and the worker judge alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.schemas import TaskResult
from shared.taskdefs import ApplicabilityRule, TaskDefinition

__all__ = ["Verdict", "apply_verdict", "evidence_value", "judge"]


@dataclass
class Verdict:
    """The applicability of one answer: ``applicable`` is None when nothing could be judged."""

    applicable: bool | None
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # evidence tasks without an answer


def _words(label: str) -> str:
    return label.replace("_", " ").replace("-", " ")


def evidence_value(rule: ApplicabilityRule, result: TaskResult) -> tuple[float, str] | None:
    """The number ``rule`` compares with ``at_least`` and the key it is recorded under.

    None when ``result`` does not hold the rule's output (another kind of answer, a
    label the version lacks).
    """
    if rule.top_not_in is not None:
        probs = result.probabilities or {}
        if not probs:
            return None
        top = max(probs, key=lambda k: probs[k])
        if top in rule.top_not_in:
            return 0.0, f"{rule.task}:top-not-{'/'.join(rule.top_not_in)}"
        return float(probs[top]), f"{rule.task}:top-not-{'/'.join(rule.top_not_in)}"
    assert rule.output is not None  # the rule's validator guarantees one test
    key = f"{rule.task}:{rule.output}"
    if result.questions is not None:
        question, _, answer = rule.output.partition(":")
        q = result.questions.get(question)
        if q is None or answer not in q.fractions:
            return None
        return float(q.fractions[answer]), key
    probs = result.probabilities or {}
    if rule.output not in probs:
        return None
    return float(probs[rule.output]), key


def judge(task: TaskDefinition, answers: Mapping[str, TaskResult]) -> Verdict:
    """Read ``task``'s applicability rules against the answers of one image.

    Parameters
    ----------
    task
        The task whose answer is judged.
    answers
        Task name → answer for the same image (the evidence tasks').

    Returns
    -------
    Verdict
        ``applicable`` False when a rule fired (with every fired rule's reason), True
        when every rule could be read and none fired, None when the task has no rules
        or none of their evidence is there. Rules whose evidence is missing are listed
        in ``missing`` and do not count either way.
    """
    if not task.applicability:
        return Verdict(applicable=None)
    verdict = Verdict(applicable=None)
    read = 0
    for rule in task.applicability:
        result = answers.get(rule.task)
        found = evidence_value(rule, result) if result is not None else None
        if found is None:
            if rule.task not in verdict.missing:
                verdict.missing.append(rule.task)
            continue
        value, key = found
        read += 1
        verdict.evidence[key] = value
        if value >= rule.at_least:
            top = str(result.value) if result is not None and result.value is not None else ""
            reason = rule.reason.format(p=f"{100.0 * value:.0f} %", top=_words(top))
            if reason not in verdict.reasons:
                verdict.reasons.append(reason)
    if read:
        verdict.applicable = not verdict.reasons
    return verdict


def apply_verdict(result: TaskResult, verdict: Verdict) -> TaskResult:
    """``result`` carrying the verdict (``applicable``, ``applicable_reason``, ``evidence``)."""
    if verdict.applicable is None:
        return result
    return result.model_copy(update={
        "applicable": verdict.applicable,
        "applicable_reason": " ".join(verdict.reasons) or None,
        "evidence": verdict.evidence,
    })
