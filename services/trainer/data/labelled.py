"""One labelled-set type for every data source; the seeded, parallel making of synthetic sets.

Every source — synthetic galaxies, rejection and morphology scenes, the Stellarium
photos, a user's catalog — returns a :class:`LabelledSet`, so the rest of a run
consumes one shape whatever the task:

- regression (inclination): ``y`` float32 ``(N,)`` in the task's unit;
- multilabel (rejection): ``y`` float32 ``(N, L)`` of 0/1 in the task's label order;
- vote tree (morphology): ``y`` int32 ``(N, A)`` vote counts in ``output_names`` order;
- classification (object type): ``y`` int64 ``(N,)`` class index into the task's labels.

Synthetic examples are rendered from their own seed (:func:`example_seed`) by
:func:`render_examples`, encoded as PNG and read back with
:func:`shared.preprocessing.preprocess`, so a set is exactly what the worker makes of
the same PNG and does not depend on how many processes rendered it.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.preprocessing import preprocess
from shared.registry import InputSpec

__all__ = ["LabelledSet", "Splits", "example_seed", "split_seeds", "render_examples",
           "synthetic_splits"]

#: ``(seed, extra, options) → (png bytes, label, truth)``: one synthetic example.
ExampleFn = Callable[[int, Any, dict[str, Any]], tuple[bytes, Any, dict[str, Any]]]


@dataclass
class LabelledSet:
    """Model inputs with their labels, ready for training or evaluation.

    Attributes
    ----------
    x
        ``(N, S, S, C)`` float32, exactly what ``shared.preprocessing.preprocess`` made.
    y
        Labels, one row per example (see the module docstring for each kind's format).
    ids
        A unique, stable id per example.
    truth
        Per-example truth (JSON-able dicts): plots, baselines, captions.
    description
        How the set was made, for the manifest (JSON-able).
    task
        The task definition's name.
    label_names
        Column names of ``y`` (multilabel, vote tree) or class names (classification).
    expected
        Vote trees on synthetic data: ``(N, A)`` answer probabilities the simulated
        volunteers voted with (the noise-free target); None elsewhere.
    """

    x: np.ndarray
    y: np.ndarray
    ids: list[str]
    truth: list[dict[str, Any]]
    description: dict[str, Any]
    task: str = ""
    label_names: list[str] = field(default_factory=list)
    expected: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if not (len(self.y) == len(self.ids) == len(self.truth) == n):
            raise ValueError(
                f"A labelled set needs one label, id and truth per input: x has {n}, "
                f"y {len(self.y)}, ids {len(self.ids)}, truth {len(self.truth)}."
            )

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledSet:
        """The examples at ``index`` (copies); the description is shared."""
        index = np.asarray(index, dtype=np.int64)
        return LabelledSet(
            x=self.x[index],
            y=self.y[index],
            ids=[self.ids[i] for i in index],
            truth=[self.truth[i] for i in index],
            description=self.description,
            task=self.task,
            label_names=list(self.label_names),
            expected=None if self.expected is None else self.expected[index],
        )

    def label_counts(self) -> dict[str, int]:
        """Examples per class (classification), positives per label (multilabel), total
        votes per answer (vote tree), keyed by ``label_names``; ``{"n": N}`` for regression."""
        if not self.label_names:
            return {"n": len(self)}
        if self.y.ndim == 1:
            counts = np.bincount(self.y.astype(np.int64), minlength=len(self.label_names))
        else:
            counts = np.rint(self.y.sum(axis=0)).astype(np.int64)
        return {name: int(c) for name, c in zip(self.label_names, counts)}


@dataclass
class Splits:
    """A source's data for one run: ``val`` None when the source has none (members then
    train a fixed schedule); ``train`` None when only the held-out sets were asked for."""

    train: LabelledSet | None
    val: LabelledSet | None
    test: LabelledSet


def example_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for example ``index`` of a data set seeded by ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> 1)


def split_seeds(seed: int) -> dict[str, int]:
    """The seeds of a run's train, validation and test sets.

    Far apart, so that the splits never share an example seed.
    """
    return {"train": seed, "val": seed + 1_000_003, "test": seed + 2_000_006}


def synthetic_splits(make: Callable[[str, int, int], LabelledSet], *,
                     sizes: dict[str, int | None], seed: int, train: bool = True) -> Splits:
    """The three splits of a synthetic source: ``make(split, n, split_seed)`` for each.

    ``sizes`` holds ``train``, ``val`` and ``test``; with ``train`` False the training
    set is not made (a resumed run or a re-evaluation needs only the held-out sets).
    """
    seeds = split_seeds(seed)

    def one(split: str) -> LabelledSet:
        n = sizes.get(split)
        if not n:
            raise ValueError(f"A synthetic source needs n_{split} > 0, not {n}.")
        data = make(split, n, seeds[split])
        data.description = {**data.description, "split": split}
        return data

    return Splits(train=one("train") if train else None, val=one("val"), test=one("test"))


def _render_chunk(
    job: tuple[ExampleFn, list[int], list[Any], dict[str, Any], dict[str, Any]],
) -> tuple[np.ndarray, list[Any], list[dict[str, Any]]]:
    example, seeds, extras, spec_json, options = job
    spec = InputSpec.model_validate(spec_json)
    xs, ys, truths = [], [], []
    for seed, extra in zip(seeds, extras):
        png, label, truth = example(seed, extra, options)
        xs.append(preprocess(png, spec))
        ys.append(label)
        truths.append(truth)
    return np.stack(xs), ys, truths


def render_examples(
    example: ExampleFn,
    n: int,
    *,
    seed: int,
    spec: InputSpec,
    workers: int = 1,
    options: dict[str, Any] | None = None,
    extras: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], float]:
    """Render ``n`` examples (example ``i`` from ``example_seed(seed, i)``) into model inputs.

    Parameters
    ----------
    example
        A module-level function (it is sent to spawned processes) returning the PNG
        bytes, label and truth of one example.
    extras
        One value per example handed to ``example`` (e.g. its inclination).
    workers
        Rendering processes, spawned (not forked), so a parent that imported
        TensorFlow is safe; the result does not depend on their number.

    Returns
    -------
    ``(x, y, truths, seconds)``.
    """
    if n <= 0:
        raise ValueError(f"A data set needs at least one example, not {n}.")
    seeds = [example_seed(seed, i) for i in range(n)]
    values = list(extras) if extras is not None else [None] * n
    chunk = max(1, math.ceil(n / max(1, workers) / 4))
    jobs = [(example, seeds[i : i + chunk], values[i : i + chunk], spec.model_dump(),
             options or {}) for i in range(0, n, chunk)]
    started = time.perf_counter()
    if workers <= 1:
        results = [_render_chunk(job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_render_chunk, jobs))
    seconds = time.perf_counter() - started
    x = np.concatenate([r[0] for r in results])
    y = np.array([label for r in results for label in r[1]])
    return x, y, [t for r in results for t in r[2]], seconds
