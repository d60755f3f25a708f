"""Streaming a batch's results as CSV or JSON, one chunk in memory at a time."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from shared.schemas import Batch, BatchRowResult, TaskResult
from shared.taskdefs import TaskDefinition, load_task_definitions

__all__ = ["task_columns", "csv_lines", "json_chunks"]


def task_columns(task: TaskDefinition) -> list[str]:
    """The CSV columns one task contributes."""
    name = task.name
    if task.kind == "regression":
        cols = [name, f"{name}_stdev"]
    elif task.kind == "classification":
        cols = [name, *(f"{name}_p_{label}" for label in task.labels or [])]
    elif task.kind == "multilabel":
        cols = [f"{name}_p_{label}" for label in task.labels or []]
    else:
        cols = [f"{name}_{col.replace(':', '_')}" for col in task.output_names]
    return [*cols, f"{name}_version"]


def _task_values(task: TaskDefinition, result: TaskResult | None) -> list[object]:
    width = len(task_columns(task))
    if result is None:
        return [""] * width
    if task.kind == "regression":
        stdev = (result.summary or {}).get("stdev", "")
        values: list[object] = [_fmt(result.value), _fmt(stdev)]
    elif task.kind in ("classification", "multilabel"):
        probs = [_fmt((result.probabilities or {}).get(label, "")) for label in task.labels or []]
        values = [result.value, *probs] if task.kind == "classification" else probs
    else:
        values = []
        for q in (task.vote_tree.questions if task.vote_tree else []):
            fractions = result.questions[q.name].fractions if result.questions else {}
            values.extend(_fmt(fractions.get(a, "")) for a in q.answers)
    return [*values, result.model_version]


def _fmt(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value


def csv_lines(batch: Batch, results: Iterable[BatchRowResult]) -> Iterator[str]:
    """CSV text: the input columns, then outcome and per-task columns."""
    tasks = [load_task_definitions()[t] for t in batch.tasks if t in load_task_definitions()]
    header = [
        *batch.columns,
        "row", "status", "error", "object",
        *(c for t in tasks for c in task_columns(t)),
    ]
    buf = io.StringIO()
    writer = csv.writer(buf)

    def flush() -> str:
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for n, res in enumerate(results):
        row = [res.input.get(c, "") for c in batch.columns]
        row += [
            res.row,
            res.status,
            res.error.detail if res.error else "",
            (res.resolved or {}).get("name", ""),
        ]
        for task in tasks:
            row += _task_values(task, (res.result or {}).get(task.name))
        writer.writerow(row)
        if n % 256 == 255:
            yield flush()
    yield flush()


def json_chunks(results: Iterable[BatchRowResult]) -> Iterator[str]:
    """A JSON array, written incrementally."""
    yield "["
    first = True
    for res in results:
        yield ("" if first else ",\n") + res.model_dump_json(exclude_none=True)
        first = False
    yield "]\n"
