"""Response models only the API uses: task listings, model cards, health."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.registry import Calibration, InputSpec, OutputSpec
from shared.taskdefs import ApplicabilityRule, TaskDefinition

__all__ = ["TaskInfo", "MemberCard", "HeldOutError", "ModelCard", "ReadyCheck", "Readiness"]


class TaskInfo(TaskDefinition):
    """A task definition plus the model versions that serve it."""

    versions: list[int]
    latest: int | None


class MemberCard(BaseModel):
    name: str
    architecture: str
    params: int | None = None
    subset_fraction: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class HeldOutError(BaseModel):
    """The held-out metric a regression headline is quoted with (e.g. RMS 2.5 deg)."""

    metric: str
    value: float
    unit: str | None = None


class ModelCard(BaseModel):
    """What a person needs to trust a model version: provenance, metrics, plots."""

    task: str
    version: int
    created: datetime
    latest: bool
    members: list[MemberCard]
    input: InputSpec
    output: OutputSpec
    calibration: Calibration | None
    tta: list[str]
    metrics: dict[str, Any]
    parity_max_abs_diff: float | None
    training: dict[str, Any]
    files: dict[str, str] = Field(description="Evaluation files (plots, metrics.json) → URL.")
    title: str | None = Field(default=None, description="The task's title.")
    description: str | None = Field(default=None, description="What the task answers.")
    intended_use: str | None = None
    limitations: list[str] = Field(default_factory=list)
    unsupported_classes: list[str] = Field(
        default_factory=list, description="Labels this version cannot be trusted on."
    )
    applicability: list[ApplicabilityRule] = Field(
        default_factory=list,
        description="When an answer does not apply to its image (the task definition's rules).",
    )
    license: str | None = None
    citation: str | None = None
    held_out_error: HeldOutError | None = Field(
        default=None, description="The headline value's error on the held-out set, if defined."
    )


class ReadyCheck(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, ReadyCheck]
    live_workers: int = Field(
        default=0, description="Worker processes with their models loaded (shown to everyone)."
    )
    workers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each live worker's details: in open mode and to admin keys only.",
    )
