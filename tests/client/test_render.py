"""How the CLI words answers and problems: every kind of task gets a readable headline."""

from __future__ import annotations

import io

from rich.console import Console

from services.client.errors import SkyserveAPIError
from services.client.render import (
    ImageOutcome,
    cutout_hint,
    format_value,
    outcome_rows,
    print_problem,
)
from shared.schemas import Job, JobResult, JobStatus, QuestionResult, TaskResult


def _result(kind: str, **fields: object) -> TaskResult:
    return TaskResult(task=kind, kind=kind, model_version=2, members=[], **fields)


REGRESSION = _result(
    "regression", unit="deg", value=61.25, summary={"mean": 61.0, "median": 61.25, "stdev": 1.75}
)
CLASSIFICATION = _result(
    "classification", value="galaxy", probabilities={"galaxy": 0.87, "star": 0.13}
)
MULTILABEL = _result(
    "multilabel",
    value=0.96,
    probabilities={"reject": 0.96, "face_on": 0.99, "bright_star": 0.2},
)
VOTE_TREE = _result(
    "vote_tree",
    questions={
        "smooth-or-featured": QuestionResult(
            reached=1.0,
            fractions={"smooth": 0.2, "featured-or-disk": 0.68, "artifact": 0.12},
            spread={"smooth": 0.1, "featured-or-disk": 0.1, "artifact": 0.05},
        ),
        "bar": QuestionResult(reached=0.6, fractions={"yes": 0.9, "no": 0.1}, spread={}),
    },
)


def test_each_kind_has_a_readable_headline() -> None:
    assert format_value(REGRESSION) == "61.25 ± 1.75 deg"
    assert format_value(CLASSIFICATION) == "galaxy (p=0.87)"
    # The first label, then every other label a person should know about, by name.
    assert format_value(MULTILABEL) == "reject p=0.96: face_on 0.99"
    # A decision tree is not "—": its first question's likeliest answer.
    assert format_value(VOTE_TREE) == "featured-or-disk 0.68 (smooth-or-featured)"


def test_a_calibrated_error_a_caveat_and_a_not_applicable_answer_are_shown() -> None:
    calibrated = REGRESSION.model_copy(update={"summary": {**REGRESSION.summary, "error": 2.5}})
    assert format_value(calibrated) == "61.25 ± 2.50 deg (1σ)"
    flagged = calibrated.model_copy(update={"applicable": False,
                                            "applicable_reason": "Looks like a nebula."})
    assert format_value(flagged) == "61.25 ± 2.50 deg (1σ) — not applicable: Looks like a nebula."
    assert format_value(calibrated.model_copy(update={"applicable": True})) == \
        "61.25 ± 2.50 deg (1σ)"
    rare = CLASSIFICATION.model_copy(update={"caveat": "galaxy is unsupported."})
    assert format_value(rare) == "galaxy (p=0.87) — caveat: galaxy is unsupported."


def test_a_decision_tree_row_carries_its_headline_answer() -> None:
    job = Job(
        id="a" * 32,
        status=JobStatus.SUCCEEDED,
        tasks=["morphology"],
        input={
            "kind": "image",
            "size_bytes": 1,
            "sha256": "0" * 64,
            "format": "PNG",
            "width": 8,
            "height": 8,
        },
        result=JobResult(tasks={"morphology": VOTE_TREE}, models={"morphology": 2}),
    )
    (row,) = outcome_rows([ImageOutcome("galaxy.png", job=job)])
    assert (row["value"], row["probability"]) == ("featured-or-disk", 0.68)


def test_a_problem_is_not_said_twice() -> None:
    detail = "path.job_id: String should match pattern '^[0-9a-f]{32}$'"
    problem = {
        "title": "The request is not valid",
        "status": 422,
        "detail": detail,
        "errors": [
            {"loc": ["path", "job_id"], "msg": "String should match pattern '^[0-9a-f]{32}$'"}
        ],
    }
    out = io.StringIO()
    print_problem(Console(file=out, width=200), SkyserveAPIError(422, problem))
    assert out.getvalue().count("should match pattern") == 1, out.getvalue()


def test_an_unreachable_survey_is_not_told_to_wait_longer() -> None:
    offline = {
        "code": "cutout-unavailable",
        "detail": "skyserver.sdss.org did not deliver an image: connection failed (ConnectError: "
        "cannot resolve skyserver.sdss.org: [Errno -2] Name or service not known) (tried 3 times).",
    }
    hint = cutout_hint(offline) or ""
    assert "SKYSERVE_CUTOUT_TIMEOUT_SECONDS" not in hint
    assert "SKYSERVE_CUTOUT_PROVIDER" in hint and "skyserve predict" in hint
    slow = {"code": "cutout-unavailable", "detail": "no answer within 10 s (tried 3 times)."}
    assert "SKYSERVE_CUTOUT_TIMEOUT_SECONDS" in (cutout_hint(slow) or "")
