"""The README's "What serves now" table says what the committed manifests say.

Each task's row must name the latest committed version (``models/<task>/<N>``) and
every figure it quotes must be that version's manifest metric, rounded as printed.
A new default version without a README update (or a typo in a figure) fails here.
"""

from __future__ import annotations

import re

import pytest

from shared.registry import RegistryReader
from shared.settings import REPO_ROOT

COMMITTED = RegistryReader(REPO_ROOT / "models")

#: task → (pattern whose first group is the printed figure, manifest metric key).
FIGURES: dict[str, list[tuple[str, str]]] = {
    "inclination": [
        (r"RMS ([\d.]+)°, MAE [\d.]+° over", "rms_deg"),
        (r"RMS [\d.]+°, MAE ([\d.]+)° over", "mae_deg"),
        (r"on ([\d,]+) galaxies", "n_test"),
        (r"baseline on the same images: RMS ([\d.]+)°", "baseline_axis_ratio_rms_deg"),
        (r"baseline on the same images: RMS [\d.]+°, MAE ([\d.]+)°", "baseline_axis_ratio_mae_deg"),
        (r"within ±1σ: ([\d.]+)", "error_coverage_1sigma"),
        (r"within ±2σ: ([\d.]+)", "error_coverage_2sigma"),
    ],
    "rejection": [
        (r"accuracy ([\d.]+)", "accuracy"),
        (r"precision ([\d.]+)", "precision"),
        (r"recall ([\d.]+)", "recall"),
        (r"on ([\d,]+) scenes", "n_test"),
    ],
    "morphology": [
        (r"vote-fraction MAE ([\d.]+)", "vote_fraction_mae"),
        (r"sampling noise alone: ([\d.]+)", "vote_fraction_mae_floor"),
        (r"NLL ([\d.]+)", "nll"),
    ],
    "object-type": [
        (r"supported classes \(([\d,]+) images\)", "n_supported"),
        (r"supported classes \([\d,]+ images\): accuracy ([\d.]+)", "supported_accuracy"),
        (r"supported classes \([\d,]+ images\): accuracy [\d.]+, macro recall ([\d.]+)",
         "supported_macro_recall"),
        (r"every class \(([\d,]+) images\)", "n"),
        (r"every class \([\d,]+ images\): accuracy ([\d.]+)", "accuracy"),
        (r"every class \([\d,]+ images\): accuracy [\d.]+, macro recall ([\d.]+)",
         "macro_recall"),
    ],
}


def table_rows() -> dict[str, str]:
    """Task → its row of the README's "What serves now" table."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## What serves now", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 4 and cells[0] in FIGURES:
            rows[cells[0]] = line
    return rows


def printed_matches(printed: str, value: float) -> bool:
    """Whether ``printed`` is ``value`` rounded to as many decimals as it shows."""
    digits = printed.replace(",", "")
    decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
    return abs(float(digits) - value) <= 0.5 * 10 ** -decimals + 1e-12


def test_every_served_task_has_a_row() -> None:
    assert set(table_rows()) == set(COMMITTED.tasks()) == set(FIGURES)


@pytest.mark.parametrize("task", sorted(FIGURES))
def test_the_readme_row_quotes_the_latest_manifest(task: str) -> None:
    row = table_rows()[task]
    manifest = COMMITTED.manifest(task)
    assert f"`models/{task}/{manifest.version}`" in row, (
        f"the README's {task} row should name models/{task}/{manifest.version}")
    for pattern, key in FIGURES[task]:
        found = re.search(pattern, row)
        assert found, f"the README's {task} row lacks {pattern!r} ({key})"
        value = manifest.metrics[key]
        assert printed_matches(found.group(1), float(value)), (
            f"README {task}: {found.group(1)} for {key}, the manifest says {value}")


def test_the_readme_rejection_row_quotes_the_weakest_reason() -> None:
    """The rejection row's "every reason" figures are the lowest precision and recall
    over the five reasons in the manifest (so no weak reason hides behind 'reject')."""
    row = table_rows()["rejection"]
    found = re.search(r"lowest per-reason precision ([\d.]+), lowest recall ([\d.]+)", row)
    assert found, row
    per_label = COMMITTED.manifest("rejection").metrics["per_label"]
    reasons = [label for label in per_label if label != "reject"]
    assert len(reasons) == 5
    lowest = (min(per_label[r]["precision"] for r in reasons),
              min(per_label[r]["recall"] for r in reasons))
    for printed, value in zip(found.groups(), lowest):
        assert printed_matches(printed, value), (printed, value)


def test_the_readme_rebuild_times_are_the_manifests() -> None:
    """`make models`' time per task, as the README prints it, is each served version's
    own measurement (``training.timings_s.total_s``; a republished version keeps the
    timings of the run that trained its members), and the total is their sum."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "`make models` rebuilds all four" in text
    paragraph = text.split("`make models` rebuilds all four", 1)[1].split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    total = 0.0
    for task in sorted(FIGURES):
        minutes = COMMITTED.manifest(task).training["timings_s"]["total_s"] / 60.0
        total += minutes
        printed = re.search(rf"{task.replace('-', ' ')} ([\d.]+)", paragraph)
        assert printed, f"the README should give {task}'s rebuild time: {paragraph}"
        assert printed_matches(printed.group(1), minutes), (task, printed.group(1), minutes)
    found = re.search(r"takes ([\d.]+) minutes", paragraph)
    assert found, f"the README should give the total: {paragraph}"
    assert printed_matches(found.group(1), total), (found.group(1), total)
