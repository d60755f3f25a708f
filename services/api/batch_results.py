"""A batch's results in every format: CSV and JSON streamed, the astronomy formats built whole.

CSV and JSON are written one chunk of rows at a time, so any batch streams in constant
memory. ECSV, FITS binary tables, VOTable and Parquet are whole-file formats (a FITS
header states the row count up front): they are built as one ``astropy`` table from the
same columns as the CSV, with units and descriptions, by :mod:`shared.tables`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from shared.schemas import Batch, BatchRowResult, TaskResult
from shared.tables import build_table, table_bytes
from shared.taskdefs import TaskDefinition, load_task_definitions

__all__ = ["task_columns", "result_header", "result_row", "csv_lines", "json_chunks", "table_file"]

_OUTCOME_COLUMNS = ("row", "status", "error", "object")


def task_columns(task: TaskDefinition) -> list[str]:
    """The CSV columns one task contributes."""
    name = task.name
    if task.kind == "regression":
        cols = [name, f"{name}_stdev", f"{name}_error"]
    elif task.kind == "classification":
        cols = [name, *(f"{name}_p_{label}" for label in task.labels or [])]
    elif task.kind == "multilabel":
        cols = [f"{name}_p_{label}" for label in task.labels or []]
    else:
        cols = [f"{name}_{col.replace(':', '_')}" for col in task.output_names]
    if task.applicability:  # whether the answer applies to the image, and why not
        cols += [f"{name}_applicable", f"{name}_applicable_reason"]
    return [*cols, f"{name}_version"]


def _task_values(task: TaskDefinition, result: TaskResult | None) -> list[object]:
    width = len(task_columns(task))
    if result is None:
        return [""] * width
    if task.kind == "regression":
        summary = result.summary or {}
        values: list[object] = [_fmt(result.value), _fmt(summary.get("stdev", "")),
                                _fmt(summary.get("error", ""))]
    elif task.kind in ("classification", "multilabel"):
        probs = [_fmt((result.probabilities or {}).get(label, "")) for label in task.labels or []]
        values = [result.value, *probs] if task.kind == "classification" else probs
    else:
        values = []
        for q in (task.vote_tree.questions if task.vote_tree else []):
            fractions = result.questions[q.name].fractions if result.questions else {}
            values.extend(_fmt(fractions.get(a, "")) for a in q.answers)
    if task.applicability:
        flag = "" if result.applicable is None else str(result.applicable).lower()
        values += [flag, result.applicable_reason or ""]
    return [*values, result.model_version]


def _fmt(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value


def _tasks(batch: Batch) -> list[TaskDefinition]:
    definitions = load_task_definitions()
    return [definitions[t] for t in batch.tasks if t in definitions]


def result_header(batch: Batch) -> list[str]:
    """Column names: the input columns, the outcome, then each task's columns."""
    return [
        *batch.columns,
        *_OUTCOME_COLUMNS,
        *(c for t in _tasks(batch) for c in task_columns(t)),
    ]


def result_row(batch: Batch, res: BatchRowResult, tasks: list[TaskDefinition] | None = None) -> list[object]:
    """One row's values, in the order of :func:`result_header`."""
    row: list[object] = [res.input.get(c, "") for c in batch.columns]
    row += [
        res.row,
        res.status,
        res.error.detail if res.error else "",
        (res.resolved or {}).get("name", ""),
    ]
    for task in tasks if tasks is not None else _tasks(batch):
        row += _task_values(task, (res.result or {}).get(task.name))
    return row


def csv_lines(batch: Batch, results: Iterable[BatchRowResult]) -> Iterator[str]:
    """CSV text: the input columns, then outcome and per-task columns."""
    tasks = _tasks(batch)
    buf = io.StringIO()
    writer = csv.writer(buf)

    def flush() -> str:
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    writer.writerow(result_header(batch))
    yield flush()
    for n, res in enumerate(results):
        writer.writerow(result_row(batch, res, tasks))
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


def _column_notes(tasks: list[TaskDefinition]) -> tuple[dict[str, str], dict[str, str]]:
    """Units and descriptions of the task columns."""
    units: dict[str, str] = {}
    notes: dict[str, str] = {
        "row": "0-based position in the submitted catalog",
        "status": "succeeded or failed",
        "error": "why the row failed",
        "object": "catalogued object the row resolved to",
    }
    for task in tasks:
        name = task.name
        notes[f"{name}_version"] = f"{name} model version that answered"
        if task.applicability:
            notes[f"{name}_applicable"] = (f"{name}: false when the answer does not apply to "
                                           "the image (task definition's rules)")
            notes[f"{name}_applicable_reason"] = f"{name}: why it does not apply"
        if task.kind == "regression":
            if task.unit:
                units[name] = units[f"{name}_stdev"] = units[f"{name}_error"] = task.unit
            notes[name] = f"{task.title}: ensemble median"
            notes[f"{name}_stdev"] = f"{name}: standard deviation over ensemble members"
            notes[f"{name}_error"] = f"{name}: 1-sigma error calibrated on held-out data"
        elif task.kind in ("classification", "multilabel"):
            if task.kind == "classification":
                notes[name] = f"{task.title}: most probable class"
            for label in task.labels or []:
                notes[f"{name}_p_{label}"] = f"{name}: probability of {label}"
        elif task.vote_tree:
            for q in task.vote_tree.questions:
                for a in q.answers:
                    notes[f"{name}_{q.name}_{a}"] = f"expected vote fraction: {q.name} → {a}"
    return units, notes


def table_file(batch: Batch, results: Iterable[BatchRowResult], fmt: str) -> bytes:
    """The whole result table as one ``ecsv``, ``fits``, ``votable`` or ``parquet`` file.

    The columns are the CSV's; the caller's columns become numbers when every value
    is one (except the id column), task columns carry units and descriptions.
    """
    tasks = _tasks(batch)
    units, notes = _column_notes(tasks)
    meta: dict[str, Any] = {
        "batch": batch.id,
        "tasks": ",".join(batch.tasks),
        "status": batch.status.value,
    }
    table = build_table(
        result_header(batch),
        (result_row(batch, res, tasks) for res in results),
        text_columns=batch.columns,
        keep_text=[batch.id_column, "error", "object", "status"],
        units=units,
        descriptions=notes,
        meta=meta,
    )
    return table_bytes(table, fmt)
