"""Pydantic models the API and the worker exchange: jobs, inputs and results."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    computed_field,
    field_validator,
    model_validator,
)

from shared.registry import Calibration

__all__ = [
    "TERMINAL_STATUSES",
    "Batch",
    "BatchRow",
    "BatchRowResult",
    "ImageInput",
    "Job",
    "JobResult",
    "JobStatus",
    "MemberAnswer",
    "NameTarget",
    "PgcTarget",
    "PositionTarget",
    "Problem",
    "Progress",
    "QuestionResult",
    "Target",
    "TargetInput",
    "TaskResult",
    "check_target_query",
    "target_kinds",
    "utcnow",
]


def utcnow() -> datetime:
    """Timezone-aware now, the only clock job records use."""
    return datetime.now(UTC)


def _null_as_nan(value: Any) -> Any:
    return math.nan if value is None else value


#: A number in a stored answer. JSON has no NaN: pydantic writes a non-finite float as
#: ``null``, so reading ``null`` back as NaN keeps every stored record readable (the
#: worker never stores a non-finite answer as a success; this guards older records).
AnswerFloat = Annotated[float, BeforeValidator(_null_as_nan)]


_PGC_NUMBER = re.compile(r"^(?:(?:PGC|LEDA)\s*)?[0-9]{1,9}$", re.IGNORECASE)
_MAX_NAME = 200


def check_target_query(query: Mapping[str, Any]) -> Mapping[str, Any]:
    """Refuse target fields no catalogue could hold, before any lookup.

    ``pgc`` is 1-9 ASCII digits (``"PGC 2557"`` and ``"LEDA 2557"`` too); names
    are at most 200 characters. Anything else is a client mistake, not a search.

    Raises
    ------
    ValueError
        With what to send instead (pydantic turns it into a 422).
    """
    pgc = query.get("pgc")
    if pgc not in (None, ""):
        if isinstance(pgc, bool) or not _PGC_NUMBER.match(str(pgc).strip()):
            raise ValueError(
                f"pgc must be a PGC number of 1 to 9 digits (0-9), e.g. 2557 or 'PGC 2557'; "
                f"got {str(pgc)[:40]!r}."
            )
    for field in ("name", "target"):
        value = query.get(field)
        if value is not None and len(str(value)) > _MAX_NAME:
            raise ValueError(f"{field} is longer than {_MAX_NAME} characters; no object is named so.")
    return query


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Problem(BaseModel):
    """RFC 9457 problem details; extra members (e.g. ``suggestions``) are kept."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = None
    instance: str | None = None


class ImageInput(BaseModel):
    """An uploaded image, described; the bytes live in the payload store."""

    kind: Literal["image"] = "image"
    filename: str | None = None
    content_type: str | None = None
    size_bytes: int
    sha256: str
    format: str
    width: int
    height: int


_MAX_PGC = 999_999_999
# ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses.
_PGC_TEXT = re.compile(r"\s*(?:PGC|LEDA)?\s*([0-9]{1,9})\s*", re.IGNORECASE)

#: The keys that say what kind of target a JSON object is, by kind.
_TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "pgc": ("pgc",),
    "name": ("name",),
    "coordinates": ("ra", "dec", "coordinates"),
}
_TARGET_FORMS = (
    '{"pgc": 2557}, {"name": "M33"}, {"ra": 10.68, "dec": 41.27} or '
    '{"coordinates": "00h42m44.3s +41d16m09s"}, each with an optional "fov_arcmin"'
)


def target_kinds(value: Any) -> list[str]:
    """The kinds of target (``pgc``, ``name``, ``coordinates``) whose keys ``value`` has."""
    if isinstance(value, _TargetBase):
        return [value.kind]
    if not isinstance(value, dict):
        return []
    return [kind for kind, keys in _TARGET_KEYS.items() if any(k in value for k in keys)]


def _target_tag(value: Any) -> str | None:
    kinds = target_kinds(value)
    # A mixture is sent to its first kind, whose validator names the conflict.
    return kinds[0] if kinds else None


class _TargetBase(BaseModel):
    """What every kind of target shares: unknown keys and mixtures are refused."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]

    fov_arcmin: float | None = Field(
        default=None,
        ge=0.05,
        le=600.0,
        description="Field of view in arcminutes (default: 1.5 × the object's major axis, "
        "or 2′ for a position with no catalogued object).",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        kinds = target_kinds(data)
        if len(kinds) > 1:
            raise ValueError(
                f"the target mixes {' and '.join(kinds)}; give exactly one of {_TARGET_FORMS}"
            )
        return data


class PgcTarget(_TargetBase):
    """A galaxy by its PGC (HyperLEDA) number."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"pgc": 2557}, {"pgc": "PGC 2557"}]}
    )
    kind: ClassVar[str] = "pgc"

    pgc: int = Field(
        ge=1,
        le=_MAX_PGC,
        description="PGC number: 2557, or text such as 'PGC 2557' or 'PGC002557'.",
    )

    @field_validator("pgc", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str):
            # ValueError, not TypeError: pydantic turns only the former into a 422 message.
            raise ValueError("pgc must be a whole number such as 2557, or text like 'PGC 2557'")  # noqa: TRY004
        if isinstance(value, str):
            match = _PGC_TEXT.fullmatch(value)
            if match is None:
                raise ValueError(
                    f"{value[:40]!r} is not a PGC number; write it like 2557 or 'PGC 2557'"
                )
            return int(match.group(1))
        return value


class NameTarget(_TargetBase):
    """A catalogued object by name: NGC/IC/Messier/UGC/PGC or a common name."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "M33"}, {"name": "NGC 4565"}]}
    )
    kind: ClassVar[str] = "name"

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
        description="Any spacing or case: 'M33', 'NGC 598', 'Triangulum Galaxy'.",
    )


_Angle = StrictFloat | StrictInt | Annotated[str, Field(min_length=1, max_length=40)]


class PositionTarget(_TargetBase):
    """A sky position (ICRS): ``ra`` + ``dec``, or both in one ``coordinates`` string."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"ra": 10.6848, "dec": 41.2689, "fov_arcmin": 5},
                {"ra": "00h42m44.3s", "dec": "+41d16m09s"},
                {"coordinates": "00h42m44.3s +41d16m09s"},
            ]
        },
    )
    kind: ClassVar[str] = "coordinates"

    ra: _Angle | None = Field(
        default=None, description="Degrees, or sexagesimal hours ('00h42m44.3s', '00:42:44.3')."
    )
    dec: _Angle | None = Field(
        default=None, description="Degrees, or sexagesimal degrees ('+41d16m09s', '+41:16:09')."
    )
    coordinates: str | None = Field(
        default=None,
        min_length=3,
        max_length=80,
        description="RA and Dec in one SkyCoord-style string: '00h42m44.3s +41d16m09s', "
        "'00:42:44.3 +41:16:09' or '10.6848 41.2689'.",
    )

    @model_validator(mode="after")
    def _parse(self) -> PositionTarget:
        from shared.coordinates import parse_coordinates
        from shared.errors import InvalidRequest

        pair = self.ra is not None or self.dec is not None
        if pair and self.coordinates is not None:
            raise ValueError("give either ra + dec or coordinates, not both")
        if not pair and self.coordinates is None:
            raise ValueError('give ra and dec, or "coordinates": "00h42m44.3s +41d16m09s"')
        if pair and (self.ra is None or self.dec is None):
            raise ValueError("ra and dec go together; give both")
        try:
            if self.coordinates is not None:
                parse_coordinates(self.coordinates)
            else:
                parse_coordinates(self.ra, self.dec)  # type: ignore[arg-type]
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from None
        return self


Target = Annotated[
    Annotated[PgcTarget, Tag("pgc")]
    | Annotated[NameTarget, Tag("name")]
    | Annotated[PositionTarget, Tag("coordinates")],
    Discriminator(
        _target_tag,
        custom_error_type="target_kind",
        custom_error_message=f"A target is one of {_TARGET_FORMS}.",
        custom_error_context={"forms": _TARGET_FORMS},
    ),
]
"""A target job's ``target``: a PGC number, a name, or a sky position (one of them)."""


class TargetInput(BaseModel):
    """A catalogued object or a sky position, resolved by the API, imaged by the worker."""

    kind: Literal["target"] = "target"
    query: dict[str, Any] = Field(description="The target as the client sent it.")
    resolved: dict[str, Any] | None = Field(
        default=None, description="The catalogued object (name, identifiers, ra, dec, size, pa, type)."
    )
    ra_deg: float
    dec_deg: float
    fov_arcmin: float
    pa_deg: float | None = Field(
        default=None, description="Position angle used to turn the major axis horizontal."
    )


class Progress(BaseModel):
    """How many units of a job are done; a single image is one unit."""

    total: int = 1
    done: int = 0
    failed: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pending(self) -> int:
        """Units neither done nor failed yet."""
        return max(self.total - self.done - self.failed, 0)


class MemberAnswer(BaseModel):
    """One ensemble member's answer (after its test-time transforms are combined)."""

    member: str
    architecture: str
    value: float | None = Field(default=None, description="Regression value, calibrated.")
    tta_values: list[AnswerFloat] | None = Field(
        default=None, description="Regression value per test-time transform, before the median."
    )
    probabilities: dict[str, AnswerFloat] | None = None


class QuestionResult(BaseModel):
    """A decision-tree question: expected vote fractions and how likely it is asked."""

    reached: AnswerFloat = Field(description="Probability that a volunteer is asked this question.")
    fractions: dict[str, AnswerFloat]
    spread: dict[str, AnswerFloat]


class TaskResult(BaseModel):
    """The answer to one task for one image: every member plus a summary."""

    task: str
    kind: str
    model_version: int
    unit: str | None = None
    value: float | str | None = Field(
        default=None,
        description="Headline answer: ensemble median (regression), most likely class "
        "(classification), probability of the first label (multilabel).",
    )
    summary: dict[str, AnswerFloat] | None = Field(
        default=None, description="Regression: mean, median, stdev, min, max over members."
    )
    probabilities: dict[str, AnswerFloat] | None = None
    spread: dict[str, AnswerFloat] | None = Field(
        default=None, description="Standard deviation of each probability over members/samples."
    )
    questions: dict[str, QuestionResult] | None = None
    members: list[MemberAnswer]
    tta: list[str] = Field(default_factory=list)
    calibration: Calibration | None = None
    applicable: bool | None = Field(
        default=None,
        description="False when the answer does not apply to this image (e.g. an inclination "
        "of a nebula), decided by the task definition's applicability rules from other "
        "tasks' answers in the same job; None when the task has no rules or no evidence.",
    )
    applicable_reason: str | None = Field(
        default=None, description="Why the answer does not apply (every rule that fired)."
    )
    caveat: str | None = Field(
        default=None,
        description="A warning that goes with the headline value, e.g. a classification whose "
        "top class is one of the task's unsupported classes (too few training examples).",
    )
    evidence: dict[str, AnswerFloat] | None = Field(
        default=None,
        description="What the applicability rules read: 'task:output' → probability or "
        "vote fraction (for object type also its top class's probability).",
    )


class JobResult(BaseModel):
    """Per-task answers of a finished single-image job."""

    tasks: dict[str, TaskResult]
    models: dict[str, int] = Field(description="Task → model version that answered.")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class Job(BaseModel):
    """A job record as stored in Redis and returned by ``GET /v1/jobs/{id}``."""

    id: str
    status: JobStatus = JobStatus.QUEUED
    tasks: list[str]
    versions: dict[str, int] = Field(
        default_factory=dict, description="Model versions the client pinned, by task."
    )
    input: ImageInput | TargetInput = Field(discriminator="kind")
    progress: Progress = Field(default_factory=Progress)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: JobResult | None = None
    error: Problem | None = None


class BatchRow(BaseModel):
    """One input row of a batch, exactly as sent, plus a problem found before running it."""

    row: int = Field(description="0-based position in the submitted catalog.")
    id: str | None = None
    input: dict[str, str]
    error: Problem | None = None


class BatchRowResult(BaseModel):
    """The outcome of one batch row."""

    row: int
    id: str | None = None
    input: dict[str, str]
    status: Literal["succeeded", "failed"]
    error: Problem | None = None
    resolved: dict[str, Any] | None = None
    result: dict[str, TaskResult] | None = None


class Batch(BaseModel):
    """A batch record: what was submitted and how far it got.

    ``progress.done`` counts rows answered, ``progress.failed`` rows that could not be;
    a batch whose every row ran is ``succeeded`` even if some rows failed.
    """

    id: str
    status: JobStatus = JobStatus.QUEUED
    tasks: list[str]
    versions: dict[str, int] = Field(default_factory=dict)
    id_column: str = "id"
    columns: list[str] = Field(description="Input columns, in the order sent.")
    progress: Progress = Field(default_factory=lambda: Progress(total=0))
    chunks: int = 0
    chunk_rows: int = 0
    source: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
