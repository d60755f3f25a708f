"""Task definitions as data: what can be asked of skyserve and how answers read.

A task is a JSON file in ``shared/taskdefs/`` validated into :class:`TaskDefinition`.
Adding a task means adding a file and training a model for it; the API, the worker
and the web page need no change.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, Field, model_validator

__all__ = [
    "TaskKind",
    "VoteQuestion",
    "VoteTreeSchema",
    "TaskDefinition",
    "load_task_definitions",
    "get_task_definition",
]

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

    @model_validator(mode="after")
    def _check_kind(self) -> TaskDefinition:
        if self.kind == "regression" and self.range is None:
            raise ValueError(f"regression task {self.name!r} needs a range")
        if self.kind in ("classification", "multilabel") and not self.labels:
            raise ValueError(f"{self.kind} task {self.name!r} needs labels")
        if self.kind == "vote_tree" and self.vote_tree is None:
            raise ValueError(f"vote_tree task {self.name!r} needs a vote_tree schema")
        return self

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
def load_task_definitions() -> dict[str, TaskDefinition]:
    """Read every ``shared/taskdefs/*.json`` into a name → definition mapping."""
    folder = resources.files("shared") / "taskdefs"
    found: dict[str, TaskDefinition] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            task = TaskDefinition.model_validate(json.loads(entry.read_text()))
            found[task.name] = task
    return found


def get_task_definition(name: str) -> TaskDefinition:
    """Return the definition of ``name``.

    Raises
    ------
    KeyError
        If no such task is defined.
    """
    return load_task_definitions()[name]
