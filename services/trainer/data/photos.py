"""Real deep-sky photographs (Debian ``stellarium-data``) labelled by object type, for training.

Only the photos that the labelled catalogue (``stellarium_dso_trainval.csv``) lists are
ever opened: the package's other labelled photos are a held-out evaluation set measured
elsewhere, so this module never lists the photo folder — it reads exactly the CSV's
``file`` names through one function, :func:`_read_photo`.

Every photo gives a colour and a greyscale example (the old nebula classifier flipped
its answer between the two); training photos also give ``copies`` augmented pairs: any
rotation, a mirror flip, a random crop keeping the aspect ratio (zoom 0.8–1.0),
brightness, contrast and gamma, mild noise. With ``balance``, a photo of a rarer class
gets more copies (:func:`balanced_copies`), so every class shows about as many
different views as the commonest one does. Every example is encoded as PNG bytes and
sent through :func:`shared.preprocessing.preprocess`, as served images are.

Environment: ``SKYSERVE_DSO_CSV`` (path, default :data:`DEFAULT_CSV`) and
``SKYSERVE_DSO_PHOTOS`` (folder, default :data:`DEFAULT_PHOTOS`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import multiprocessing
import os
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from services.trainer.data.labelled import LabelledSet, Splits
from shared.errors import SkyserveError
from shared.preprocessing import decode_image, preprocess
from shared.registry import InputSpec
from shared.settings import REPO_ROOT
from shared.taskdefs import TaskDefinition, get_task_definition

__all__ = [
    "DEFAULT_CSV",
    "DEFAULT_PHOTOS",
    "PhotoRow",
    "catalog_paths",
    "read_catalog",
    "catalog_warnings",
    "class_counts",
    "augment",
    "balanced_copies",
    "SourceParams",
    "photo_set",
    "splits",
]

# The team's labelled catalogue sits beside the repository, in ../shared/data.
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "data" / "stellarium_dso_trainval.csv"
DEFAULT_PHOTOS = Path("/usr/share/stellarium/nebulae/default")
COLUMNS = ("file", "object", "label", "split", "ongc_type", "hubble", "majax_arcmin",
           "minax_arcmin", "pa_deg")
SPLITS = ("train", "val")
_MAX_PIXELS = 50_000_000
# ITU-R BT.601 luma: what "convert to black and white" gives in most tools.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PhotoRow:
    """One row of the labelled catalogue; ``line`` is its line number in the CSV (header = 1)."""

    line: int
    file: str
    object: str
    label: str
    split: str
    ongc_type: str
    hubble: str


def catalog_paths(csv_path: str | Path | None = None,
                  photo_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The catalogue and photo folder: the arguments, else the environment, else the defaults."""
    csv_file = Path(csv_path or os.environ.get("SKYSERVE_DSO_CSV") or DEFAULT_CSV)
    folder = Path(photo_dir or os.environ.get("SKYSERVE_DSO_PHOTOS") or DEFAULT_PHOTOS)
    return csv_file, folder


def read_catalog(csv_path: str | Path | None = None) -> list[PhotoRow]:
    """Every row of the labelled catalogue, in file order (labels are not checked here).

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist.
    ValueError
        If a required column is missing.
    """
    path, _ = catalog_paths(csv_path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        present = reader.fieldnames or []
        missing = [c for c in ("file", "object", "label", "split") if c not in present]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {missing}; expected {list(COLUMNS)}.")
        return [
            PhotoRow(line=i, file=(r["file"] or "").strip(), object=(r["object"] or "").strip(),
                     label=(r["label"] or "").strip(), split=(r["split"] or "").strip(),
                     ongc_type=(r.get("ongc_type") or "").strip(),
                     hubble=(r.get("hubble") or "").strip())
            for i, r in enumerate(reader, start=2)
        ]


def _row_problem(row: PhotoRow, labels: list[str], folder: Path) -> str | None:
    """Why a row cannot be used, or None."""
    if not row.file or Path(row.file).name != row.file:
        return f"file {row.file!r} is not a plain file name in the photo folder"
    if row.label not in labels:
        return f"label {row.label!r} is not one of the object-type classes {labels}"
    if row.split not in SPLITS:
        return f"split {row.split!r} is neither 'train' nor 'val'"
    if not (folder / row.file).is_file():
        return f"photo {row.file} is missing from {folder}"
    return None


def catalog_warnings(rows: list[PhotoRow]) -> list[dict[str, Any]]:
    """Things in the catalogue worth a human look (reported, never corrected here).

    - an object whose photos sit in both splits;
    - an object with photos under two different labels;
    - rows with no object name, for which the split-by-object cannot be checked.
    """
    by_object: dict[str, list[PhotoRow]] = defaultdict(list)
    for row in rows:
        if row.object:
            by_object[row.object].append(row)
    warnings: list[dict[str, Any]] = []
    for name, group in by_object.items():
        files = [r.file for r in group]
        if len({r.split for r in group}) > 1:
            warnings.append({"kind": "object_in_both_splits", "object": name, "files": files})
        if len({r.label for r in group}) > 1:
            warnings.append({"kind": "object_with_two_labels", "object": name, "files": files,
                             "labels": [r.label for r in group]})
    nameless = [r.file for r in rows if not r.object]
    if nameless:
        warnings.append({"kind": "no_object_name", "files": nameless,
                         "note": "split by object cannot be verified for these rows"})
    return warnings


def class_counts(split: str | None = None, *, csv_path: str | Path | None = None) -> dict[str, int]:
    """Photos per class in the catalogue (one split, or both), in the task's label order.

    Counts catalogue rows; no photo is opened. Rows with an unknown label are not counted.
    """
    labels = get_task_definition("object-type").output_names
    counts = Counter(r.label for r in read_catalog(csv_path) if split is None or r.split == split)
    return {label: int(counts.get(label, 0)) for label in labels}


def _portable(path: Path) -> str:
    """``path`` as the manifest records it: relative to the repository when it sits
    beside it (the team's ``../shared``), so no manifest names one machine's folders."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO_ROOT.resolve())
    except ValueError:  # another drive (Windows): nothing relative to say
        return str(path)


def _read_photo(path: Path) -> bytes:
    """The one place a photo is read (tests instrument it)."""
    return path.read_bytes()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _grey(image: np.ndarray, weights: np.ndarray = _LUMA) -> np.ndarray:
    return _to_uint8(image @ weights)


def augment(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """One random, aspect-keeping augmentation of an ``(H, W, 3)`` float image in [0, 1].

    Any rotation (corners filled black, like the package's masked corners), a mirror
    flip, a random crop of 80–100 % of each side at the same aspect ratio, brightness,
    contrast and gamma, and mild Gaussian noise. Returns the image and what was done.
    """
    angle, flip = float(rng.uniform(0.0, 360.0)), bool(rng.random() < 0.5)
    zoom = float(rng.uniform(0.8, 1.0))
    pil = Image.fromarray(_to_uint8(image))
    pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    if flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    width, height = pil.size
    cw, ch = max(1, round(width * zoom)), max(1, round(height * zoom))
    left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    out = np.asarray(pil.crop((left, top, left + cw, top + ch)), dtype=np.float32) / 255.0
    contrast, brightness = float(rng.uniform(0.8, 1.25)), float(rng.uniform(-0.06, 0.06))
    gamma, noise = float(np.exp(rng.uniform(-0.2, 0.2))), float(rng.uniform(0.0, 0.02))
    mean = float(out.mean())
    out = np.clip((out - mean) * contrast + mean + brightness, 0.0, 1.0) ** gamma
    out = out + rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    done = {"angle_deg": angle, "flip": flip, "zoom": zoom, "crop": [left, top, cw, ch],
            "contrast": contrast, "brightness": brightness, "gamma": gamma, "noise": noise}
    return np.clip(out, 0.0, 1.0), done


def _working_copy(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink big photos before augmenting: preprocess ends at ``size`` anyway."""
    height, width = image.shape[:2]
    target = max(2 * size, 128)
    if max(height, width) <= target:
        return image
    scale = target / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil = Image.fromarray(_to_uint8(image)).resize(new, Image.Resampling.LANCZOS)
    return np.asarray(pil, dtype=np.float32) / 255.0


def _photo_examples(
    job: tuple[dict[str, Any], str, dict[str, Any], int, int],
) -> tuple[list[np.ndarray], list[str], list[dict[str, Any]], str | None]:
    """All examples of one photo, or the reason it could not be used."""
    row_json, folder, spec_json, copies, seed = job
    row, spec = PhotoRow(**row_json), InputSpec.model_validate(spec_json)
    try:
        data = _read_photo(Path(folder) / row.file)
        image = decode_image(data, max_pixels=_MAX_PIXELS)
        examples = [("colour", -1, preprocess(data, spec), {}),  # the photo as a user sends it
                    ("grey", -1, preprocess(_png(_grey(image)), spec), {})]
    except (OSError, SkyserveError) as exc:
        return [], [], [], f"photo {row.file} cannot be read: {exc}"
    rng = np.random.default_rng([seed, zlib.crc32(row.file.encode())])
    work = _working_copy(image, spec.size) if copies else image
    for k in range(copies):
        aug, done = augment(work, rng)
        # Greyscale as a user's conversion (luma) or one colour channel (one filter's band).
        channel = int(rng.integers(-1, 3))
        weights = _LUMA if channel < 0 else np.eye(3, dtype=np.float32)[channel]
        done_grey = {**done, "grey": "luma" if channel < 0 else "RGB"[channel]}
        examples.append(("colour", k, preprocess(_png(_to_uint8(aug)), spec), done))
        examples.append(("grey", k, preprocess(_png(_grey(aug, weights)), spec), done_grey))
    arrays, ids, truths = [], [], []
    base = {k: v for k, v in asdict(row).items() if k != "line"}
    for variant, k, array, done in examples:
        arrays.append(array)
        ids.append(f"{row.file}#{variant}" if k < 0 else f"{row.file}#aug{k}-{variant}")
        truths.append({**base, "variant": variant, "copy": k, "augmentation": done,
                       "source_size": [int(image.shape[1]), int(image.shape[0])]})
    return arrays, ids, truths, None


def balanced_copies(photo_counts: dict[str, int], copies: int, max_copies: int,
                    power: float = 1.0) -> dict[str, int]:
    """Augmented pairs per photo of each class: ``copies · (n_max / n)^power`` for a class
    of ``n`` photos (``n_max`` the commonest's), never fewer than ``copies`` nor more
    than ``max_copies`` (a class of two photos gains little from a hundred views).
    ``power`` 1 gives every class about as many views as the commonest; 0.5 (square
    root) leaves some of the catalogue's own class frequencies, which the served photos
    share."""
    present = {label: n for label, n in photo_counts.items() if n > 0}
    if not present:
        return {}
    most, ceiling = max(present.values()), max(copies, max_copies)
    return {label: int(min(ceiling, max(copies, math.ceil(copies * (most / n) ** power - 1e-9))))
            for label, n in present.items()}


def photo_set(
    split: Literal["train", "val"],
    *,
    spec: InputSpec,
    seed: int,
    copies: int = 4,
    balance: float = 0.0,
    max_copies: int = 32,
    csv_path: str | Path | None = None,
    photo_dir: str | Path | None = None,
    workers: int = 1,
    task: TaskDefinition | None = None,
) -> LabelledSet:
    """The labelled photos of one split as model inputs, colour and greyscale alike.

    Parameters
    ----------
    split
        ``train`` or ``val`` (the catalogue's ``split`` column, chosen by object).
    spec
        The model input spec passed to :func:`shared.preprocessing.preprocess`.
    seed
        Seeds the augmentations (per photo, so the result does not depend on ``workers``).
    copies
        Augmented colour+grey pairs per training photo (validation photos get none).
    balance, max_copies
        Give the photos of rarer classes more copies (:func:`balanced_copies` with
        ``power=balance``; 0: none), at most ``max_copies`` each.
    csv_path, photo_dir
        Override ``SKYSERVE_DSO_CSV`` / ``SKYSERVE_DSO_PHOTOS``.
    workers
        Processes decoding and augmenting photos.
    task
        The classification task whose labels the CSV uses (default ``object-type``).

    Returns
    -------
    LabelledSet
        ``y`` int64 class index into the object-type task's labels; ids
        ``<file>#colour``, ``<file>#grey``, ``<file>#aug<k>-colour|grey``. Rows that could
        not be used are listed in ``description["unusable_rows"]`` with the reason.

    Raises
    ------
    ValueError
        If ``split`` is unknown, ``copies`` negative, or no photo of the split is usable.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}.")
    if copies < 0:
        raise ValueError(f"copies must be 0 or more, not {copies}.")
    csv_file, folder = catalog_paths(csv_path, photo_dir)
    task = task or get_task_definition("object-type")
    labels = task.output_names
    rows = read_catalog(csv_file)
    unusable: list[dict[str, Any]] = []
    usable: list[PhotoRow] = []
    for row in rows:
        if row.split != split and row.split in SPLITS:
            continue
        problem = _row_problem(row, labels, folder)
        if problem:
            unusable.append({"line": row.line, "file": row.file, "reason": problem})
        else:
            usable.append(row)
    n_copies = copies if split == "train" else 0
    per_class = {r.label: n_copies for r in usable}
    if balance and n_copies:
        per_class = balanced_copies(Counter(r.label for r in usable), n_copies, max_copies,
                                    power=balance)
    jobs = [(asdict(r), str(folder), spec.model_dump(), per_class[r.label], seed)
            for r in usable]
    if workers <= 1:
        results = [_photo_examples(job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            chunk = max(1, math.ceil(len(jobs) / workers / 4))
            results = list(pool.map(_photo_examples, jobs, chunksize=chunk))
    arrays: list[np.ndarray] = []
    ids: list[str] = []
    truths: list[dict[str, Any]] = []
    used: list[PhotoRow] = []
    for row, (row_arrays, row_ids, row_truths, problem) in zip(usable, results):
        if problem:
            unusable.append({"line": row.line, "file": row.file, "reason": problem})
            continue
        used.append(row)
        arrays += row_arrays
        ids += row_ids
        truths += row_truths
    if not arrays:
        raise ValueError(f"No usable photo in the {split!r} split of {csv_file}: {unusable[:5]}")
    y = np.array([labels.index(t["label"]) for t in truths], dtype=np.int64)
    photo_counts = Counter(r.label for r in used)
    description = {
        "task": task.name, "source": "stellarium-data photos", "split": split,
        "csv": _portable(csv_file), "csv_sha256": hashlib.sha256(csv_file.read_bytes()).hexdigest(),
        "photo_dir": str(folder), "seed": seed, "copies": n_copies, "spec": spec.model_dump(),
        "balance": balance if n_copies else 0.0, "max_copies": max_copies,
        "copies_per_class": per_class,
        "photos": len(used), "examples": len(ids),
        "examples_per_photo": 2 * (1 + n_copies) if not (balance and n_copies) else None,
        "photo_class_counts": {label: int(photo_counts.get(label, 0)) for label in labels},
        "example_class_counts": {label: int(c) for label, c in
                                 zip(labels, np.bincount(y, minlength=len(labels)))},
        "unusable_rows": unusable,
        "catalog_warnings": catalog_warnings(rows),
        "variants": "each photo: colour (its own bytes) + greyscale (luma); train copies: "
                    "augmented colour + greyscale (luma or one channel)",
        "augmentations": "rotation 0-360 (black corners), mirror flip p=0.5, crop 80-100% "
                         "keeping aspect, contrast 0.8-1.25, brightness ±0.06, gamma "
                         "e^±0.2, Gaussian noise σ ≤ 0.02",
    }
    return LabelledSet(x=np.stack(arrays), y=y, ids=ids, truth=truths, description=description,
                       task=task.name, label_names=list(labels))


class SourceParams(BaseModel):
    """The ``photos`` source's parameters in a recipe."""

    model_config = ConfigDict(extra="forbid")

    copies: int = Field(default=4, ge=0)  # augmented colour+grey pairs per training photo
    balance: float = Field(default=0.0, ge=0.0, le=1.0)  # rarer classes get more (power)
    max_copies: int = Field(default=32, ge=0)  # ...at most this many per photo
    csv_path: Path | None = None  # default: SKYSERVE_DSO_CSV, else DEFAULT_CSV
    photo_dir: Path | None = None  # default: SKYSERVE_DSO_PHOTOS, else DEFAULT_PHOTOS


def splits(params: dict[str, Any], *, task: TaskDefinition, sizes: dict[str, int | None],
           spec: InputSpec, seed: int, workers: int, train: bool = True) -> Splits:
    """The catalogue's ``train`` photos (augmented) and its ``val`` photos as the test set.

    There is no validation split: members train a fixed schedule without looking at
    the evaluation photos. The sizes are the catalogue's, not the recipe's.
    """
    options = SourceParams.model_validate(params)
    where = {"csv_path": options.csv_path, "photo_dir": options.photo_dir}
    return Splits(
        train=photo_set("train", spec=spec, seed=seed, copies=options.copies,
                        balance=options.balance, max_copies=options.max_copies,
                        workers=workers, task=task, **where) if train else None,
        val=None,
        test=photo_set("val", spec=spec, seed=seed, copies=0, workers=workers, task=task,
                       **where))
