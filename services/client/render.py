"""How the ``skyserve`` CLI shows things: result tables, catalogues, problems, progress."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from services.client.errors import SkyserveAPIError
from shared.schemas import Batch, Job, JobStatus, TaskResult

__all__ = [
    "ImageOutcome",
    "format_value",
    "headline_answer",
    "outcome_rows",
    "results_table",
    "submitted_table",
    "tasks_table",
    "models_table",
    "readiness_table",
    "print_problem",
    "cutout_hint",
    "BatchProgress",
]

_CUTOUT_CODES = ("cutout-unavailable", "host-not-allowed")


def cutout_hint(problem: Any) -> str | None:
    """What to do when the server could not image a target: the setting, or an upload.

    ``problem`` is a job's or row's error (a dict or a ``Problem``); None for other errors.
    """
    if problem is None:
        return None
    data = problem if isinstance(problem, dict) else problem.model_dump()
    code, detail = data.get("code"), str(data.get("detail") or "")
    if code not in _CUTOUT_CODES:
        return None
    lowered = detail.lower()
    if code == "host-not-allowed":
        setting = "add the host to SKYSERVE_CUTOUT_ALLOWED_HOSTS"
    elif "local archive" in lowered:
        setting = "put the image in SKYSERVE_CUTOUT_ARCHIVE_DIR"
    elif "no cutout service" in lowered or "configured" in lowered or "provider" in lowered:
        setting = (
            "set SKYSERVE_CUTOUT_PROVIDER (sdss, legacy, http with "
            "SKYSERVE_CUTOUT_URL_TEMPLATE, or local with SKYSERVE_CUTOUT_ARCHIVE_DIR)"
        )
    elif "connection failed" in lowered or "cannot resolve" in lowered:
        # Waiting longer does not help a machine that cannot reach the survey at all.
        setting = (
            "let the worker reach the survey (is it offline?), point SKYSERVE_CUTOUT_PROVIDER "
            "/ SKYSERVE_CUTOUT_URL_TEMPLATE at a survey it can reach, or serve cutouts from "
            "a folder (SKYSERVE_CUTOUT_PROVIDER=local, SKYSERVE_CUTOUT_ARCHIVE_DIR)"
        )
    else:
        setting = (
            "raise SKYSERVE_CUTOUT_TIMEOUT_SECONDS / SKYSERVE_CUTOUT_RETRIES, or point "
            "SKYSERVE_CUTOUT_PROVIDER / SKYSERVE_CUTOUT_URL_TEMPLATE at a survey it can reach"
        )
    return (
        f"The server could not get an image of this target. Whoever runs it can {setting}. "
        "Or upload an image of it instead: skyserve predict IMAGE (or drop it on the web page)."
    )

_STATUS_STYLE = {
    JobStatus.QUEUED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}


@dataclass
class ImageOutcome:
    """What happened to one input of ``predict``/``target``: a job, or a refusal."""

    label: str
    job: Job | None = None
    error: SkyserveAPIError | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "input": self.label,
            "job": self.job.model_dump(mode="json") if self.job else None,
            "error": self.error.problem if self.error else None,
        }


def headline_answer(result: TaskResult) -> tuple[str, float] | None:
    """A decision tree's headline: the first question's likeliest answer and its fraction."""
    if not result.questions:
        return None
    first = next(iter(result.questions.values()))
    if not first.fractions:
        return None
    return max(first.fractions.items(), key=lambda item: item[1])


def format_value(result: TaskResult) -> str:
    """The headline answer, readably.

    ``42.10 ± 1.30 deg`` (regression: median ± its calibrated 1σ error, or the
    ensemble spread in versions without an error model), ``galaxy (p=0.87)``
    (classification), ``reject p=0.96: face_on 0.99`` (multilabel: the first label's
    probability, then the other labels at 0.5 or more), ``featured-or-disk 0.68
    (smooth-or-featured)`` (vote tree: the first question's likeliest answer). An
    answer with a caveat ends with ``— caveat: <caveat>``, one flagged
    ``applicable: false`` with ``— not applicable: <reason>``.
    """
    text = _format_value(result)
    if result.caveat:
        text += f" — caveat: {result.caveat}"
    if result.applicable is False:
        text += f" — not applicable: {result.applicable_reason or 'see the evidence'}"
    return text


def _format_value(result: TaskResult) -> str:
    unit = f" {result.unit}" if result.unit else ""
    if result.kind == "vote_tree":
        top = headline_answer(result)
        if top is None:
            return "—"
        question = next(iter(result.questions or {}))
        return f"{top[0]} {top[1]:.2f} ({question})"
    if result.kind == "multilabel" and result.probabilities and isinstance(result.value, float):
        head, *others = result.probabilities
        likely = [f"{label} {result.probabilities[label]:.2f}" for label in others
                  if result.probabilities[label] >= 0.5]  # fmt: skip
        return f"{head} p={result.value:.2f}" + (f": {', '.join(likely)}" if likely else "")
    if isinstance(result.value, str):
        p = (result.probabilities or {}).get(result.value)
        return result.value if p is None else f"{result.value} (p={p:.2f})"
    if result.value is None:
        return "—"
    error = (result.summary or {}).get("error")
    if error is not None:
        return f"{result.value:.2f} ± {error:.2f}{unit} (1σ)"
    stdev = (result.summary or {}).get("stdev")
    if stdev is None:
        return f"{result.value:.4g}{unit}"
    return f"{result.value:.2f} ± {stdev:.2f}{unit}"


def _status(status: JobStatus | str) -> str:
    try:
        style = _STATUS_STYLE[JobStatus(status)]
    except ValueError:
        style = "white"
    return f"[{style}]{escape(str(status))}[/]"


def _problem_text(problem: Any) -> str:
    if problem is None:
        return ""
    data = problem if isinstance(problem, dict) else problem.model_dump()
    title, detail = data.get("title") or "", data.get("detail") or ""
    return f"{title} — {detail}" if title and detail else title or detail


def _refusal(error: SkyserveAPIError | None) -> str:
    """``422 unknown-task``: enough for a table cell; the full problem goes to stderr."""
    if error is None:
        return ""
    return f"{error.status} {error.code or error.title}"


def outcome_rows(outcomes: Sequence[ImageOutcome]) -> Iterable[dict[str, Any]]:
    """One flat row per input and task (for tables and CSV files)."""
    for outcome in outcomes:
        job = outcome.job
        base = {"input": outcome.label, "job": job.id if job else "", "task": "", "value": None}
        base |= {"stdev": None, "label": "", "model_version": None}
        if job is None:
            refusal = {"error": str(outcome.error), "short_error": _refusal(outcome.error)}
            yield base | {"status": "refused"} | refusal
            continue
        base |= {"status": job.status.value, "error": _problem_text(job.error)}
        if job.result is None:
            yield base | {"task": ",".join(job.tasks)}
            continue
        for task, result in job.result.tasks.items():
            stdev = (result.summary or {}).get("stdev")
            value = result.value
            # A decision tree has no single value: its headline is the first question's
            # likeliest answer, given like a classifier's class (its fraction alongside).
            top = headline_answer(result) if result.kind == "vote_tree" else None
            if top is not None:
                value = top[0]
            probability = (
                top[1]
                if top is not None
                else (result.probabilities or {}).get(result.value)
                if isinstance(result.value, str)
                else None
            )
            yield base | {
                "task": task,
                "value": value,
                "probability": probability,
                "stdev": stdev,
                "label": format_value(result),
                "model_version": result.model_version,
            }


def results_table(outcomes: Sequence[ImageOutcome], *, first_column: str = "image") -> Table:
    """Input, task, value ± stdev and model version; errors in place of values."""
    table = Table(header_style="bold")
    table.add_column(first_column, overflow="fold", min_width=10)
    table.add_column("task", min_width=6)
    table.add_column("value ± stdev", overflow="fold", min_width=18)
    table.add_column("model version", justify="right")
    for row in outcome_rows(outcomes):
        if row["status"] == JobStatus.SUCCEEDED:
            value = escape(row["label"])
        elif row["status"] == "refused":
            value = f"[red]refused: {escape(row['short_error'])}[/]"
        elif row["status"] == JobStatus.FAILED:
            value = f"[red]failed: {escape(row['error'])}[/]"
        else:
            value = _status(row["status"])
        version = "" if row["model_version"] is None else f"v{row['model_version']}"
        table.add_row(escape(row["input"]), escape(row["task"]), value, version)
    return table


def submitted_table(outcomes: Sequence[ImageOutcome], *, first_column: str = "image") -> Table:
    """Input, job id and status, for ``--no-wait``."""
    table = Table(header_style="bold")
    table.add_column(first_column, overflow="fold", min_width=10)
    table.add_column("job", no_wrap=True)
    table.add_column("status")
    for outcome in outcomes:
        if outcome.job is None:
            refusal = escape(_refusal(outcome.error))
            table.add_row(escape(outcome.label), "", f"[red]refused: {refusal}[/]")
        else:
            table.add_row(escape(outcome.label), outcome.job.id, _status(outcome.job.status))
    return table


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    for name in ("task", "kind", "unit / labels", "versions", "title"):
        table.add_column(name)
    for t in tasks:
        detail = t.get("unit") or ", ".join(t.get("labels") or [])
        versions = ", ".join(f"v{v}" for v in t.get("versions") or []) or "none served"
        row = (t.get("name"), t.get("kind"), detail, versions, t.get("title"))
        table.add_row(*(escape(str(v or "")) for v in row))
    return table


def _metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)]
    return ", ".join(f"{k}={v:.3g}" for k, v in scalars[:limit])


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    for name in ("task", "version", "latest", "members", "created", "metrics"):
        table.add_column(name)
    for m in models:
        table.add_row(
            escape(str(m.get("task", ""))),
            f"v{m.get('version')}",
            "✓" if m.get("latest") else "",
            str(len(m.get("members") or [])),
            escape(str(m.get("created", ""))[:19]),
            escape(_metrics(m.get("metrics") or {})),
        )
    return table


def readiness_table(report: dict[str, Any]) -> Table:
    ready = report.get("ready")
    table = Table(title="[green]ready[/]" if ready else "[red]not ready[/]", header_style="bold")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail")
    for name, check in (report.get("checks") or {}).items():
        ok = "[green]✓[/]" if check.get("ok") else "[red]✗[/]"
        table.add_row(escape(name), ok, escape(str(check.get("detail", ""))))
    return table


def print_problem(console: Console, exc: SkyserveAPIError) -> None:
    """A refused request, readably: title, detail, and what to try instead."""
    console.print(f"[bold red]Error:[/] {escape(str(exc))}")
    for key, label in (("served_tasks", "Served tasks"), ("available", "Available")):
        values = exc.problem.get(key)
        if values:
            console.print(f"  {label}: {escape(', '.join(map(str, values)))}")
    errors = exc.problem.get("errors")
    detail = str(exc.problem.get("detail") or "")
    if isinstance(errors, list):
        for err in errors[:5]:
            message = str(err.get("msg", ""))
            if message and message.rstrip(".") in detail:
                continue  # the detail already said it
            where = ".".join(map(str, err.get("loc", [])))
            console.print(f"  • {escape(where)}: {escape(message)}")


class BatchProgress:
    """A live bar of a batch's rows: done, failed, pending and rows per second."""

    def __init__(self, console: Console, batch_id: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[done]} done[/] · [red]{task.fields[failed]} failed[/] · "
                "{task.fields[pending]} pending · {task.fields[rate]} rows/s"
            ),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID = self._progress.add_task(
            f"batch {batch_id[:12]}", total=None, done=0, failed=0, pending="?", rate="–"
        )
        self._start: tuple[float, int] | None = None

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, batch: Batch) -> None:
        p = batch.progress
        finished = p.done + p.failed
        now = time.monotonic()
        if self._start is None:
            self._start = (now, finished)
        elapsed = now - self._start[0]
        rate = f"{(finished - self._start[1]) / elapsed:.1f}" if elapsed > 0 else "–"
        self._progress.update(
            self._task,
            total=p.total or None,
            completed=finished,
            done=p.done,
            failed=p.failed,
            pending=p.pending,
            rate=rate,
        )
