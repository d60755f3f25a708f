"""Object-type photos: only catalogue-listed files are read, colour+grey pairs, split by object.

Needs the Debian package ``stellarium-data`` (photos under
``/usr/share/stellarium/nebulae/default``) and the labelled catalogue; skipped without them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from services.trainer.data import photos
from shared.registry import InputSpec
from tests.helpers.requirements import require_path

CSV_FILE, PHOTO_DIR = photos.catalog_paths()
# The photos come from a Debian package (required on CI); the labelled catalogue is team data.
require_path(PHOTO_DIR, package="stellarium-data")
if not CSV_FILE.is_file():
    pytest.skip(f"needs the labelled catalogue {CSV_FILE}", allow_module_level=True)
SPEC = InputSpec(size=32)
# A few catalogue rows: palette with transparency (n7822, pleiades), RGB, several classes.
PICK = {"m51-vasey.png": "train", "n7822.png": "train", "pleiades.png": "train",
        "m2.png": "val", "n6543.png": "val"}


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """A catalogue of five real rows (their own splits changed freely) plus two bad rows."""
    with CSV_FILE.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = [{**r, "split": PICK[r["file"]]} for r in reader if r["file"] in PICK]
    assert len(rows) == len(PICK)
    rows.append({**rows[0], "file": "no-such-photo.png", "object": "X1", "split": "train"})
    rows.append({**rows[1], "file": "m2.png", "object": "X2", "label": "quasar", "split": "train"})
    path = tmp_path / "catalogue.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every photo path the module reads."""
    seen: list[str] = []
    real = photos._read_photo

    def spy(path: Path) -> bytes:
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(photos, "_read_photo", spy)
    return seen


def test_only_listed_photos_are_read(small_csv: Path, opened: list[str]) -> None:
    ds = photos.photo_set("train", spec=SPEC, seed=0, copies=1, csv_path=small_csv)
    train = {f for f, s in PICK.items() if s == "train"}
    assert sorted(Path(p).name for p in opened) == sorted(train)
    assert all(Path(p).parent == PHOTO_DIR for p in opened)
    assert {i.split("#")[0] for i in ds.ids} == train
    # bad rows are listed with a reason, never silently dropped
    reasons = {u["file"]: u["reason"] for u in ds.description["unusable_rows"]}
    assert "missing" in reasons["no-such-photo.png"]
    assert "quasar" in reasons["m2.png"]
    json.dumps([ds.truth, ds.description], allow_nan=False)


def test_colour_and_grey_pairs(small_csv: Path) -> None:
    ds = photos.photo_set("train", spec=SPEC, seed=0, copies=2, csv_path=small_csv)
    assert ds.x.shape == (3 * 2 * 3, 32, 32, 3) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.task == "object-type"
    for file in (f for f, s in PICK.items() if s == "train"):
        for stem in ("", "aug0-", "aug1-"):
            assert f"{file}#{stem}colour" in ds.ids and f"{file}#{stem}grey" in ds.ids
    for x, truth in zip(ds.x, ds.truth):
        grey = np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])
        assert grey == (truth["variant"] == "grey"), truth
    labels = ds.label_names
    assert all(labels[y] == t["label"] for y, t in zip(ds.y, ds.truth))
    again = photos.photo_set("train", spec=SPEC, seed=0, copies=2, csv_path=small_csv)
    np.testing.assert_array_equal(again.x, ds.x)


def test_balanced_copies_give_rare_classes_more_views() -> None:
    counts = {"galaxy": 100, "open_cluster": 25, "reflection_nebula": 3, "dark_nebula": 0}
    got = photos.balanced_copies(counts, 4, 32)
    assert got == {"galaxy": 4, "open_cluster": 16, "reflection_nebula": 32}
    assert photos.balanced_copies(counts, 4, 2)["reflection_nebula"] == 4  # never below copies
    root = photos.balanced_copies(counts, 4, 32, power=0.5)  # 4 * sqrt(100 / n)
    assert root == {"galaxy": 4, "open_cluster": 8, "reflection_nebula": 24}


def test_balanced_photo_set(small_csv: Path) -> None:
    ds = photos.photo_set("train", spec=SPEC, seed=0, copies=1, balance=1.0, max_copies=3,
                          csv_path=small_csv)
    per_class = ds.description["copies_per_class"]
    views = {}
    for truth in ds.truth:
        views[truth["file"]] = max(views.get(truth["file"], -1), truth["copy"])
    for truth in ds.truth:  # every photo has exactly its class's number of copies
        assert views[truth["file"]] + 1 == per_class[truth["label"]]
    assert max(per_class.values()) <= 3 and min(per_class.values()) >= 1


def test_validation_split_is_not_augmented(small_csv: Path) -> None:
    ds = photos.photo_set("val", spec=SPEC, seed=0, copies=5, balance=1.0, csv_path=small_csv)
    assert sorted(ds.ids) == ["m2.png#colour", "m2.png#grey", "n6543.png#colour", "n6543.png#grey"]
    assert ds.description["copies"] == 0


def test_catalogue_split_by_object() -> None:
    rows = photos.read_catalog()
    splits: dict[str, set[str]] = {}
    for row in rows:
        if row.object:
            splits.setdefault(row.object, set()).add(row.split)
    assert all(len(s) == 1 for s in splits.values())
    kinds = {w["kind"] for w in photos.catalog_warnings(rows)}
    assert "object_in_both_splits" not in kinds
    counts = photos.class_counts()
    assert sum(counts.values()) == len(rows)
    assert counts == {k: photos.class_counts("train")[k] + photos.class_counts("val")[k]
                      for k in counts}
