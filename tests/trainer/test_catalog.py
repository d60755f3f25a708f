"""``skyserve-train catalog``: a user's CSV as it is, every unusable row listed, the rest trained.

The slow tests run the real command (tiny net, a couple of steps), then load the
published version with a real worker ``SessionCache`` and answer with it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from services.trainer.data.catalog import (
    CatalogSpec,
    match_vote_columns,
    read_catalog,
    split_indices,
)
from shared.registry import InputSpec, RegistryReader
from shared.taskdefs import get_task_definition, load_task_definitions
from tests.helpers.images import ellipse, encode, png_bytes, truncated_png

MORPHOLOGY = get_task_definition("morphology")
assert MORPHOLOGY.vote_tree is not None
ANSWERS = MORPHOLOGY.vote_tree.answer_columns
SPEC = InputSpec(size=32)


def _zoobot_catalog(folder: Path, n: int = 16) -> tuple[Path, dict[int, str]]:
    """A Zoobot-format CSV (id_str, file_loc, question_answer counts) with three bad rows.

    Returns the CSV and the expected unusable rows: CSV line → reason fragment.
    """
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    header = ["id_str", "file_loc", "ra"] + [c.replace(":", "_") for c in ANSWERS]
    rows = []
    for i in range(n):
        name = f"images/g{i}.png"
        (folder / name).write_bytes(png_bytes(40, axis_ratio=0.3 + 0.04 * i, seed=i))
        counts = rng.integers(0, 12, size=len(ANSWERS))
        rows.append([f"gal-{i}", name, f"{10 + i:.1f}", *counts.tolist()])
    rows[3][1] = "images/missing.png"  # line 5: missing file
    (folder / "images/g6.png").write_bytes(truncated_png(40))  # line 8: corrupt image
    rows[9][5] = "nan"  # line 11: NaN vote count (how-rounded_round)
    path = folder / "catalog.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path, {5: "missing file", 8: "unreadable image", 11: "missing label"}


def test_read_catalog_lists_exactly_the_bad_rows_with_their_reasons(tmp_path: Path) -> None:
    path, bad = _zoobot_catalog(tmp_path)
    found = read_catalog(CatalogSpec(csv_path=path, task_name="my-tree", kind="vote_tree",
                                     schema=MORPHOLOGY.vote_tree), SPEC)
    assert {u.row: u.reason.split(":")[0].split(" (")[0] for u in found.unusable} == bad
    assert len(found.data) == 16 - 3
    assert found.data.y.shape == (13, len(ANSWERS)) and found.data.y.dtype == np.int32
    assert found.columns["smooth-or-featured:smooth"] == "smooth-or-featured_smooth"
    assert found.task.kind == "vote_tree" and found.task.output_names == ANSWERS
    assert "gal-3" not in found.data.ids and "gal-4" in found.data.ids


def test_regression_and_classification_rows_out_of_range_or_unknown(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encode(ellipse(24)))
    (tmp_path / "b.jpg").write_bytes(b"this is not an image")
    lines = ["id,image,incl,kind", "1,a.png,60,spiral", "2,a.png,30,spiral", "3,b.jpg,70,spiral",
             "4,a.png,,spiral", "1,a.png,50,blob", "5,a.png,inf,", "6,a.png,88,spiral"]
    path = tmp_path / "c.csv"
    path.write_text("\n".join(lines) + "\n")
    found = read_catalog(CatalogSpec(csv_path=path, task_name="incl-user", kind="regression",
                                     id_column="id", image_column="image",
                                     label_columns=("incl",), value_range=(45.0, 90.0)), SPEC)
    reasons = {u.row: u.reason for u in found.unusable}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    assert reasons[3].startswith("out-of-range value: incl=30")
    assert reasons[4].startswith("unreadable image")
    assert reasons[5].startswith("missing label")
    assert reasons[6].startswith("duplicate id (first on row 2)")
    assert found.data.ids == ["1", "6"] and found.data.y.tolist() == [60.0, 88.0]
    found = read_catalog(CatalogSpec(csv_path=path, task_name="kinds", kind="classification",
                                     id_column="id", image_column="image",
                                     label_columns=("kind",), classes=("spiral",)), SPEC)
    reasons = {u.row: u.reason for u in found.unusable}
    assert "unknown class 'blob'" in reasons[6] and "missing label" in reasons[7]


def test_vote_columns_match_by_name_or_order_and_say_what_is_missing() -> None:
    header = ["id_str", *[c.replace(":", "_").upper() for c in ANSWERS]]
    assert match_vote_columns(MORPHOLOGY.vote_tree, header)["bar:no"] == "BAR_NO"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bulge-size:dominant"):
        match_vote_columns(MORPHOLOGY.vote_tree, header[:-1])  # type: ignore[arg-type]
    given = tuple(f"c{i}" for i in range(len(ANSWERS)))
    assert match_vote_columns(MORPHOLOGY.vote_tree, list(given), given)["bar:no"] == "c11"  # type: ignore[arg-type]


def test_splits_are_stratified_disjoint_and_reproducible() -> None:
    y = np.array([0] * 20 + [1] * 6 + [2] * 2)
    train, val, test = split_indices(y, "classification", seed=3)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert len(train) + len(val) + len(test) == len(y)
    assert set(y[test]) == {0, 1} and set(y[val]) == {0, 1}  # class 2 (2 rows) stays in train
    again = split_indices(y, "classification", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def _app():  # type: ignore[no-untyped-def]
    from services.trainer.cli import app

    return app


TINY = ["--architecture", "tiny", "--input-size", "32", "--epochs", "1", "--steps-per-epoch",
        "2", "--batch-size", "8", "--threads", "1"]


@pytest.mark.slow
def test_catalog_command_trains_a_zoobot_vote_tree_and_the_worker_serves_it(tmp_path: Path) -> None:
    from services.worker.inference import predict
    from services.worker.sessions import SessionCache

    path, bad = _zoobot_catalog(tmp_path)
    schema = tmp_path / "schema.json"
    schema.write_text(MORPHOLOGY.vote_tree.model_dump_json())  # type: ignore[union-attr]
    root = tmp_path / "models"
    result = CliRunner().invoke(_app(), [
        "catalog", str(path), "--task-name", "my-tree", "--kind", "vote-tree",
        "--schema", str(schema), "--models-dir", str(root), "--mc-samples", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert "3 of 16 rows not used" in result.output
    version = root / "my-tree" / "1"
    with (version / "unusable_rows.csv").open() as fh:
        listed = {int(r["row"]): r["reason"] for r in csv.DictReader(fh)}
    assert sorted(listed) == sorted(bad)
    manifest = RegistryReader(root).manifest("my-tree")
    assert manifest.output.activation == "dirichlet" and manifest.output.mc_dropout is not None
    assert len(manifest.members) == 3 and manifest.parity_max_abs_diff < 1e-4
    metrics = json.loads((version / "metrics.json").read_text())
    assert {"vote_fraction_mae", "nll", "plots"} <= set(metrics)
    assert all((version / p).is_file() for p in metrics["plots"])
    definitions = load_task_definitions(root)
    assert "my-tree" in definitions and (root / "my-tree" / "task.json").is_file()
    cache = SessionCache(RegistryReader(root), providers=["CPUExecutionProvider"],
                         intra_op_threads=1, task_definitions=definitions)
    images = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    answers = predict(definitions["my-tree"], cache.get("my-tree"), images, max_batch_size=16)
    fractions = answers[0].questions["smooth-or-featured"].fractions  # type: ignore[index]
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_catalog_command_trains_a_regression_and_refuses_a_builtin_name(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    lines = ["id,file,inclination"]
    for i in range(14):
        (images / f"{i}.png").write_bytes(png_bytes(36, axis_ratio=0.2 + 0.05 * i, seed=i))
        lines.append(f"g{i},{i}.png,{50 + 3 * i}")
    lines.append("g99,99.png,60")  # missing file
    lines.append("g98,0.png,12")  # out of range
    (tmp_path / "cat.csv").write_text("\n".join(lines) + "\n")
    root = tmp_path / "models"
    base = ["catalog", str(tmp_path / "cat.csv"), "--kind", "regression", "--id-column", "id",
            "--image-column", "file", "--label-columns", "inclination", "--range", "45", "90",
            "--images-root", str(images), "--models-dir", str(root), *TINY]
    refused = CliRunner().invoke(_app(), [*base, "--task-name", "inclination"])
    assert refused.exit_code == 2 and "built-in task" in refused.output
    result = CliRunner().invoke(_app(), [*base, "--task-name", "user-incl", "--unit", "deg",
                                         "--tune", "2", "--tune-epochs", "1"])
    assert result.exit_code == 0, result.output
    version = root / "user-incl" / "1"
    rows = (version / "unusable_rows.csv").read_text().splitlines()
    assert rows[0] == "row,id,reason" and len(rows) == 3
    assert "missing file" in rows[1] and "out-of-range value" in rows[2]
    metrics = json.loads((version / "metrics.json").read_text())
    assert {"rms_deg", "mae_deg", "bias_m", "bias_b"} <= set(metrics)
    manifest = RegistryReader(root).manifest("user-incl")
    assert manifest.output.activation == "tanh_range" and manifest.calibration is not None
    tuning = manifest.training["data"]["tuning"]
    assert len(tuning["trials"]) == 2 and manifest.training["hyperparameters"]["architecture"] \
        == "tuned-user-incl" and tuning["layers"].startswith("C")
