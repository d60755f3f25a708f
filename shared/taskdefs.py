"""Task definitions as data: what can be asked of skyserve and how answers read.

A task is a JSON file in ``shared/taskdefs/`` validated into :class:`TaskDefinition`.
Adding a task means adding a file and training a model for it; the API, the worker
and the web page need no change. Tasks users define by training on their own
catalog (``skyserve-train catalog``) live in the model registry instead, as
``<models_dir>/<task>/task.json``; pass the registry root to see them too.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

__all__ = [
    "TASK_FILE",
    "ApplicabilityRule",
    "TaskDefinition",
    "TaskKind",
    "VoteQuestion",
    "VoteTreeSchema",
    "get_task_definition",
    "load_task_definitions",
    "registry_task_definitions",
]

TASK_FILE = "task.json"

TaskKind = Literal["regression", "classification", "multilabel", "vote_tree"]
NAME_PATTERN = r"^[a-z0-9-]+$"


class VoteQuestion(BaseModel):
    """One question of a Galaxy Zoo-style decision tree."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    text: str = ""
    answers: list[str] = Field(min_length=2)
    # The answer (as "question:answer") that leads to this question; None for the root.
    depends_on: str | None = None


class VoteTreeSchema(BaseModel):
    """Questions, their answers and which answer leads to which question."""

    questions: list[VoteQuestion] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_links(self) -> VoteTreeSchema:
        seen: set[str] = set()
        for q in self.questions:
            if q.name in seen:
                raise ValueError(f"question {q.name!r} appears twice in the schema")
            if q.depends_on is not None:
                parent, _, answer = q.depends_on.partition(":")
                parents = {p.name: p for p in self.questions}
                if parent not in parents or answer not in parents[parent].answers:
                    raise ValueError(
                        f"question {q.name!r} depends on {q.depends_on!r}, which is not "
                        "an answer of an earlier question"
                    )
                if parent not in seen:
                    raise ValueError(f"question {q.name!r} must come after {parent!r}")
            seen.add(q.name)
        return self

    @property
    def answer_columns(self) -> list[str]:
        """Flat output order: ``question:answer`` for every answer of every question."""
        return [f"{q.name}:{a}" for q in self.questions for a in q.answers]


class ApplicabilityRule(BaseModel):
    """One reason an answer does not apply, read off another task's answer in the same job.

    The rule fires when the evidence task's ``output`` reaches ``at_least``: a
    probability (classification, multilabel) or a vote fraction (vote tree,
    ``question:answer``). With ``top_not_in`` (classification) it fires when the most
    likely class is none of those classes and its probability reaches ``at_least``.
    ``reason`` is what the answer then says; ``{p}`` is the evidence value as a
    percentage and ``{top}`` the top class (in words).
    """

    task: str = Field(pattern=NAME_PATTERN, description="The task whose answer is the evidence.")
    output: str | None = Field(
        default=None,
        description="A label (classification, multilabel) or 'question:answer' (vote tree).",
    )
    top_not_in: list[str] | None = Field(
        default=None, description="Classification: fire when the top class is none of these."
    )
    at_least: float = Field(ge=0.0, le=1.0)
    reason: str

    @model_validator(mode="after")
    def _one_test(self) -> ApplicabilityRule:
        if (self.output is None) == (self.top_not_in is None):
            raise ValueError("an applicability rule needs exactly one of output or top_not_in")
        return self


class TaskDefinition(BaseModel):
    """What a task answers and how a model's raw outputs become that answer."""

    name: str = Field(pattern=NAME_PATTERN)
    title: str
    description: str
    kind: TaskKind
    unit: str | None = None
    # regression: the served range (e.g. 45-90 degrees from face-on).
    range: tuple[float, float] | None = None
    # classification: mutually exclusive classes; multilabel: independent labels.
    labels: list[str] | None = None
    vote_tree: VoteTreeSchema | None = None
    # What a model card says about every version of the task (a manifest may add its own).
    intended_use: str | None = Field(default=None, description="What the answers are for.")
    limitations: list[str] = Field(
        default_factory=list, description="Known limitations, in words a user can act on."
    )
    unsupported_classes: list[str] = Field(
        default_factory=list,
        description="Labels the models cannot be trusted on (too few training examples).",
    )
    error_metric: str | None = Field(
        default=None,
        description="Held-out metric (a key of the manifest's metrics) that is the headline "
        "value's error, e.g. rms_deg; quoted with every answer.",
    )
    applicability: list[ApplicabilityRule] = Field(
        default_factory=list,
        description="When an answer does not apply to its image: rules read off other tasks' "
        "answers, which the worker computes in the same job (asked for or not). Any rule "
        "that fires makes the answer 'applicable: false' with its reason.",
    )
    license: str | None = None
    citation: str | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> TaskDefinition:
        if self.kind == "regression" and self.range is None:
            raise ValueError(f"regression task {self.name!r} needs a range")
        if self.kind in ("classification", "multilabel") and not self.labels:
            raise ValueError(f"{self.kind} task {self.name!r} needs labels")
        if self.kind == "vote_tree" and self.vote_tree is None:
            raise ValueError(f"vote_tree task {self.name!r} needs a vote_tree schema")
        unknown = [c for c in self.unsupported_classes if c not in (self.labels or [])]
        if unknown:
            raise ValueError(f"unsupported_classes of {self.name!r} are not labels: {unknown}")
        if any(rule.task == self.name for rule in self.applicability):
            raise ValueError(f"an applicability rule of {self.name!r} cannot use its own answer")
        return self

    @property
    def evidence_tasks(self) -> list[str]:
        """Tasks whose answers the applicability rules read, in rule order."""
        return list(dict.fromkeys(rule.task for rule in self.applicability))

    @property
    def output_names(self) -> list[str]:
        """Names of the model's output columns, in order."""
        if self.kind == "regression":
            return [self.name]
        if self.kind == "vote_tree":
            assert self.vote_tree is not None  # checked by the validator
            return self.vote_tree.answer_columns
        return list(self.labels or [])


@lru_cache
def _builtin_definitions() -> dict[str, TaskDefinition]:
    folder = resources.files("shared") / "taskdefs"
    found: dict[str, TaskDefinition] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            task = TaskDefinition.model_validate(json.loads(entry.read_text()))
            found[task.name] = task
    return found


def registry_task_definitions(registry_root: Path) -> dict[str, TaskDefinition]:
    """User-defined tasks: every ``<registry_root>/<task>/task.json`` whose name matches its folder.

    Files that do not validate are skipped (a half-written definition never breaks
    the built-in tasks); read fresh on every call, so newly published tasks appear.
    """
    root = Path(registry_root)
    found: dict[str, TaskDefinition] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.glob(f"*/{TASK_FILE}")):
        try:
            task = TaskDefinition.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        if task.name == path.parent.name:
            found[task.name] = task
    return found


def load_task_definitions(registry_root: Path | None = None) -> dict[str, TaskDefinition]:
    """Name → definition: ``shared/taskdefs/*.json``, plus the registry's user tasks.

    Built-in definitions win over a registry ``task.json`` of the same name.
    """
    builtin = _builtin_definitions()
    if registry_root is None:
        return builtin
    return {**registry_task_definitions(registry_root), **builtin}


def get_task_definition(name: str, registry_root: Path | None = None) -> TaskDefinition:
    """Return the definition of ``name`` (looking in the registry too when given).

    Raises
    ------
    KeyError
        If no such task is defined.
    """
    return load_task_definitions(registry_root)[name]
