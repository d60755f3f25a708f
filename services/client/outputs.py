"""``--out`` files of ``skyserve predict``/``target``: the format follows the extension.

``.csv`` and ``.json`` are what they always were (one CSV row per input and task; the
full job records as JSON). ``.ecsv``, ``.fits`` (a binary table), ``.vot``/``.votable``
/``.xml`` (VOTable) and ``.parquet`` hold the CSV's rows as a typed table: ``value`` is
the numeric headline (a regression's median, a classifier's top probability, a
multilabel task's first-label probability, a decision tree's likeliest first answer's
vote fraction), ``class`` the top class of a classifier or that answer of a decision
tree, ``stdev`` the ensemble spread, with units. An unknown
extension is refused before anything is submitted, never written as JSON in disguise.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from services.client.render import ImageOutcome, outcome_rows
from shared.tables import build_table, format_for_path, table_bytes

__all__ = ["CSV_FIELDS", "TABLE_FIELDS", "out_format", "write_outcomes"]

CSV_FIELDS = ["input", "job", "status", "task", "value", "stdev", "model_version", "error"]
TABLE_FIELDS = [
    "input", "job", "status", "task", "value", "class", "stdev", "unit", "model_version", "error",
]  # fmt: skip


def out_format(path: Path) -> str:
    """The format of an ``--out`` file from its extension.

    Raises
    ------
    ValueError
        For an extension that is not a table format (the message lists them).
    """
    return format_for_path(path)


def _table_row(row: dict[str, object], units: dict[str, str]) -> list[object]:
    value = row.get("value")
    label = ""
    if isinstance(value, str):  # a class or tree answer; its probability is the value
        label, value = value, row.get("probability")
    unit = units.get(str(row.get("task")), "")
    return [
        row.get("input", ""),
        row.get("job", ""),
        row.get("status", ""),
        row.get("task", ""),
        value,
        label,
        row.get("stdev"),
        unit,
        row.get("model_version"),
        row.get("error", ""),
    ]


def write_outcomes(path: Path, outcomes: Sequence[ImageOutcome]) -> str:
    """Write ``outcomes`` to ``path`` in the format its extension names; return the format."""
    fmt = out_format(path)
    if fmt == "json":
        path.write_text(json.dumps([o.as_json() for o in outcomes], indent=2, default=str))
        return fmt
    rows = list(outcome_rows(outcomes))
    if fmt == "csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        return fmt
    units = {
        task: result.unit
        for o in outcomes
        if o.job and o.job.result
        for task, result in o.job.result.tasks.items()
        if result.unit
    }
    table = build_table(
        TABLE_FIELDS,
        [_table_row(row, units) for row in rows],
        keep_text=["input", "job", "status", "task", "class", "unit", "error"],
        descriptions={
            "value": "headline answer: median (regression), probability (classifiers) or "
            "vote fraction (decision trees)",
            "class": "most probable class, or a decision tree's likeliest first answer",
            "stdev": "standard deviation over ensemble members",
        },
        meta={"source": "skyserve predict/target"},
    )
    path.write_bytes(table_bytes(table, fmt))
    return fmt
