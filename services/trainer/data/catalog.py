"""A user's catalog CSV, taken as it is, turned into a task definition and labelled splits.

The CSV has an id column, an image column (a path relative to ``images_root`` — the
CSV's own folder by default — an absolute path, or an http(s) URL) and label
columns: one value (regression), one class name (classification), 0/1 flags
(multilabel) or one vote count per answer of a decision tree (Zoobot's format:
``id_str``, ``file_loc``, ``<question>_<answer>`` or ``<question>:<answer>``).
Images are read with :func:`shared.preprocessing.preprocess`, as the worker reads them.

Nothing is dropped silently: every row that cannot be used is listed with every
reason found (missing id, duplicate id, missing file, unreadable image, missing or
NaN label, a value out of range, an unknown class, a row with no votes at all).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.trainer.data.labelled import LabelledSet
from shared.errors import SkyserveError
from shared.preprocessing import preprocess
from shared.registry import InputSpec
from shared.taskdefs import (
    TASK_FILE,
    TaskDefinition,
    VoteTreeSchema,
    load_task_definitions,
)

__all__ = ["CatalogSpec", "CatalogData", "Unusable", "read_catalog", "match_vote_columns",
           "split_indices", "write_task_definition", "unusable_rows_csv"]

CatalogKind = Literal["regression", "classification", "multilabel", "vote_tree"]
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class CatalogSpec:
    """How to read a catalog: which columns mean what, and the task it defines."""

    csv_path: Path
    task_name: str
    kind: CatalogKind
    id_column: str = "id_str"
    image_column: str = "file_loc"
    label_columns: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # regression
    schema: VoteTreeSchema | None = None  # vote tree
    classes: tuple[str, ...] = ()  # classification: the class order (else sorted)
    images_root: Path | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Unusable:
    """A catalog row that was not used, and every reason why."""

    row: int  # line number in the CSV file (the header is line 1)
    id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "id": self.id, "reason": self.reason}


@dataclass
class CatalogData:
    """What a catalog yields: its task, the usable examples, and the rows left out."""

    task: TaskDefinition
    data: LabelledSet
    unusable: list[Unusable]
    columns: dict[str, str] = field(default_factory=dict)  # task output → CSV column
    rows: int = 0


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def match_vote_columns(schema: VoteTreeSchema, header: list[str],
                       given: tuple[str, ...] = ()) -> dict[str, str]:
    """Map each ``question:answer`` of the schema to a CSV column.

    ``given`` columns are taken in the schema's answer order; otherwise a column
    named ``question:answer`` or ``question_answer`` (case, ``-``/``_`` ignored)
    is looked for.

    Raises
    ------
    ValueError
        If a schema answer has no column (the message lists them and the header).
    """
    wanted = schema.answer_columns
    if given:
        if len(given) != len(wanted):
            raise ValueError(f"{len(given)} label columns given; the schema has {len(wanted)} "
                             f"answers ({', '.join(wanted)}).")
        missing = [c for c in given if c not in header]
        if missing:
            raise ValueError(f"Label columns not in the CSV: {', '.join(missing)}.")
        return dict(zip(wanted, given))
    by_norm = {_norm(h): h for h in header}
    found, missing = {}, []
    for column in wanted:
        question, _, answer = column.partition(":")
        for candidate in (column, f"{question}_{answer}"):
            if _norm(candidate) in by_norm:
                found[column] = by_norm[_norm(candidate)]
                break
        else:
            missing.append(column)
    if missing:
        raise ValueError(f"No vote-count column for {', '.join(missing)} (looked for "
                         f"'question_answer' or 'question:answer'); the CSV has: "
                         f"{', '.join(header)}.")
    return found


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value


def _read_bytes(location: str, root: Path, fetch: Callable[[str], bytes] | None) -> bytes:
    if location.startswith(("http://", "https://")):
        if fetch is None:
            import httpx

            response = httpx.get(location, timeout=20.0, follow_redirects=True)
            response.raise_for_status()
            return response.content
        return fetch(location)
    path = Path(location)
    if not path.is_absolute():
        path = root / path
    return path.read_bytes()


def read_catalog(spec: CatalogSpec, input_spec: InputSpec, *,
                 fetch: Callable[[str], bytes] | None = None,
                 max_pixels: int = 50_000_000) -> CatalogData:
    """Read every row; keep the usable ones as model inputs, list the others with reasons.

    Raises
    ------
    ValueError
        If the CSV lacks a named column, the options do not fit the kind (no range
        for regression, no schema for a vote tree), or no row at all is usable.
    """
    csv_path = Path(spec.csv_path)
    root = Path(spec.images_root) if spec.images_root else csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        records = list(reader)
    for name in (spec.id_column, spec.image_column):
        if name not in header:
            raise ValueError(f"The CSV has no column {name!r}; it has: {', '.join(header)}.")

    columns: dict[str, str]
    if spec.kind == "vote_tree":
        if spec.schema is None:
            raise ValueError("A vote-tree catalog needs a schema (--schema schema.json).")
        columns = match_vote_columns(spec.schema, header, spec.label_columns)
    else:
        if not spec.label_columns:
            raise ValueError("Name the label column(s) with --label-columns.")
        if spec.kind in ("regression", "classification") and len(spec.label_columns) != 1:
            raise ValueError(f"A {spec.kind} catalog has exactly one label column, not "
                             f"{len(spec.label_columns)}.")
        missing = [c for c in spec.label_columns if c not in header]
        if missing:
            raise ValueError(f"Label columns not in the CSV: {', '.join(missing)}; it has: "
                             f"{', '.join(header)}.")
        columns = {c: c for c in spec.label_columns}
    if spec.kind == "regression" and spec.value_range is None:
        raise ValueError("A regression catalog needs the served range (--range LO HI).")

    label_values: list[Any] = []
    problems: list[list[str]] = []
    ids: list[str] = []
    first_row: dict[str, int] = {}
    for i, record in enumerate(records):
        line = i + 2
        why: list[str] = []
        rid = (record.get(spec.id_column) or "").strip()
        if not rid:
            why.append(f"missing id ({spec.id_column} is empty)")
        elif rid in first_row:
            why.append(f"duplicate id (first on row {first_row[rid]})")
        else:
            first_row[rid] = line
        ids.append(rid)
        value, label_why = _parse_label(spec, record, columns)
        why += label_why
        label_values.append(value)
        problems.append(why)

    if spec.kind == "classification":
        seen = sorted({v for v, p in zip(label_values, problems) if v is not None and not p})
        classes = list(spec.classes) or seen
        for k, v in enumerate(label_values):
            if v is not None and v not in classes:
                problems[k].append(f"unknown class {v!r} (classes: {', '.join(classes)})")
    else:
        classes = []

    arrays: list[np.ndarray] = []
    kept: list[int] = []
    for i, record in enumerate(records):
        location = (record.get(spec.image_column) or "").strip()
        if not location:
            problems[i].append(f"missing file ({spec.image_column} is empty)")
            continue
        try:
            data = _read_bytes(location, root, fetch)
        except FileNotFoundError:
            problems[i].append(f"missing file: {location}")
            continue
        except (OSError, ValueError) as exc:
            problems[i].append(f"image not readable from {location}: {type(exc).__name__}: {exc}")
            continue
        except Exception as exc:  # httpx errors and the like: reported, never fatal
            problems[i].append(f"download failed for {location}: {type(exc).__name__}")
            continue
        try:
            array = preprocess(data, input_spec, max_pixels=max_pixels)
        except SkyserveError as exc:
            problems[i].append(f"unreadable image: {exc.detail}")
            continue
        if not problems[i]:
            arrays.append(array)
            kept.append(i)

    unusable = [Unusable(row=i + 2, id=ids[i], reason="; ".join(p))
                for i, p in enumerate(problems) if p]
    if not kept:
        raise ValueError(f"No usable row in {csv_path} ({len(records)} rows): "
                         + "; ".join(f"row {u.row}: {u.reason}" for u in unusable[:5]))
    task = _task_definition(spec, classes, csv_path, len(kept))
    y = _labels(spec, [label_values[i] for i in kept], classes)
    data = LabelledSet(
        x=np.stack(arrays), y=y, ids=[ids[i] for i in kept],
        truth=[{"row": i + 2} for i in kept],
        description={"source": "user catalog", "csv": str(csv_path), "rows": len(records),
                     "usable": len(kept), "unusable": len(unusable),
                     "id_column": spec.id_column, "image_column": spec.image_column,
                     "label_columns": columns, "images_root": str(root),
                     "spec": input_spec.model_dump(), "scaling": input_spec.scaling},
        task=task.name, label_names=task.output_names if spec.kind != "regression" else [],
    )
    return CatalogData(task=task, data=data, unusable=unusable, columns=columns,
                       rows=len(records))


def _parse_label(spec: CatalogSpec, record: dict[str, Any],
                 columns: dict[str, str]) -> tuple[Any, list[str]]:
    why: list[str] = []
    raw = {out: (record.get(col) or "").strip() for out, col in columns.items()}
    if spec.kind == "classification":
        (col,) = columns.values()
        text = raw[col]
        if not text or text.lower() == "nan":
            return None, [f"missing label ({col} is empty)"]
        return text, []
    if spec.kind == "multilabel":
        flags = []
        for col, text in raw.items():
            low = text.lower()
            if not low or low == "nan":
                why.append(f"missing label ({col} is empty or NaN)")
            elif low in _TRUE or low in _FALSE:
                flags.append(1.0 if low in _TRUE else 0.0)
            else:
                why.append(f"out-of-range value: {col}={text!r} is not 0/1")
        return (flags if not why else None), why
    values = []
    for out, text in raw.items():
        col = columns[out]
        value = _number(text) if text else None
        if value is None or math.isnan(value):
            why.append(f"missing label ({col} is empty or NaN)" if not text or text.lower() == "nan"
                       else f"missing label ({col}={text!r} is not a number)")
        elif math.isinf(value):
            why.append(f"out-of-range value: {col}={text}")
        elif spec.kind == "regression":
            lo, hi = spec.value_range  # type: ignore[misc]
            if not lo <= value <= hi:
                why.append(f"out-of-range value: {col}={value:g} is outside [{lo:g}, {hi:g}]")
        elif value < 0 or value != int(value):
            why.append(f"out-of-range value: {col}={text} is not a vote count (>= 0, whole)")
        values.append(value)
    if spec.kind == "vote_tree" and not why and sum(values) == 0:
        why.append("no votes at all (every count is 0)")
    return (values if not why else None), why


def _labels(spec: CatalogSpec, values: list[Any], classes: list[str]) -> np.ndarray:
    if spec.kind == "classification":
        return np.array([classes.index(v) for v in values], dtype=np.int64)
    if spec.kind == "regression":
        return np.array([v[0] for v in values], dtype=np.float32)
    if spec.kind == "multilabel":
        return np.array(values, dtype=np.float32)
    return np.rint(np.array(values)).astype(np.int32)


def _task_definition(spec: CatalogSpec, classes: list[str], csv_path: Path,
                     n: int) -> TaskDefinition:
    if spec.task_name in load_task_definitions():
        raise ValueError(f"{spec.task_name!r} is a built-in task; give the catalog task "
                         "another name (--task-name).")
    body: dict[str, Any] = {
        "name": spec.task_name,
        "title": f"{spec.task_name} (user catalog)",
        "description": f"Trained with skyserve-train catalog on {csv_path.name} ({n} usable "
                       f"rows); {spec.kind.replace('_', ' ')} of "
                       f"{', '.join(spec.label_columns) or 'the schema answers'}.",
        "kind": spec.kind,
        "unit": spec.unit,
    }
    if spec.kind == "regression":
        body["range"] = list(spec.value_range)  # type: ignore[arg-type]
    elif spec.kind == "classification":
        body["labels"] = classes
    elif spec.kind == "multilabel":
        body["labels"] = [c.strip().lower().replace(" ", "_") for c in spec.label_columns]
    else:
        body["vote_tree"] = spec.schema.model_dump()  # type: ignore[union-attr]
    return TaskDefinition.model_validate(body)


def split_indices(y: np.ndarray, kind: str, *, seed: int, val: float = 0.15,
                  test: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test row indices; stratified by class for classification.

    Every group (a class, or the whole set) of at least 3 rows gives at least one
    row to validation and one to test; smaller classes stay in training.
    """
    rng = np.random.default_rng([seed, 7])
    groups = ([np.flatnonzero(y == c) for c in np.unique(y)] if kind == "classification"
              else [np.arange(len(y))])
    parts: list[list[int]] = [[], [], []]
    for group in groups:
        group = rng.permutation(group)
        if len(group) < 3:
            parts[0] += group.tolist()
            continue
        n_test = max(1, int(round(test * len(group))))
        n_val = max(1, int(round(val * len(group))))
        parts[2] += group[:n_test].tolist()
        parts[1] += group[n_test : n_test + n_val].tolist()
        parts[0] += group[n_test + n_val :].tolist()
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def write_task_definition(models_dir: Path, task: TaskDefinition) -> Path:
    """Write ``<models_dir>/<task>/task.json`` atomically (read by ``shared.taskdefs``)."""
    folder = Path(models_dir) / task.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TASK_FILE
    staging = folder / f".{TASK_FILE}.{os.getpid()}"
    staging.write_text(task.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.replace(staging, path)
    return path


def unusable_rows_csv(rows: list[dict[str, Any]]) -> bytes:
    """``unusable_rows.csv`` bytes (``row, id, reason``) for rows a source could not use.

    Catalog rows come as ``{row, id, reason}``, photo rows as ``{line, file, reason}``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["row", "id", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({"row": r.get("row", r.get("line")), "id": r.get("id", r.get("file")),
                      "reason": r["reason"]} for r in rows)
    return buffer.getvalue().encode()
