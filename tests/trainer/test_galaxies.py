"""Data sets: the trainer's arrays are exactly what shared preprocessing makes of the PNG."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("galsim")

from services.trainer.dataset import balanced_inclinations, build_dataset, dihedral  # noqa: E402
from shared.preprocessing import preprocess  # noqa: E402
from shared.registry import InputSpec  # noqa: E402


@pytest.mark.parametrize("spec", [InputSpec(size=32), InputSpec(size=48, scaling="symmetric")])
def test_dataset_arrays_equal_shared_preprocess_of_the_same_png(spec: InputSpec) -> None:
    data = build_dataset(6, seed=11, spec=spec, keep_png=True)
    assert data.png is not None and len(data.png) == 6
    assert data.x.shape == (6, spec.size, spec.size, 3)
    for array, png in zip(data.x, data.png):
        assert np.array_equal(array, preprocess(png, spec))


def test_dataset_is_deterministic_and_seeds_differ() -> None:
    spec = InputSpec(size=32)
    a = build_dataset(4, seed=3, spec=spec)
    b = build_dataset(4, seed=3, spec=spec)
    c = build_dataset(4, seed=4, spec=spec)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_inclinations_are_balanced_over_5_degree_bins() -> None:
    values = balanced_inclinations(900, np.random.default_rng(0))
    counts, _ = np.histogram(values, bins=np.arange(45.0, 90.1, 5.0))
    assert counts.tolist() == [100] * 9


def test_dihedral_augmentation_only_flips_and_rotates() -> None:
    batch = np.random.default_rng(1).random((16, 8, 8, 3)).astype(np.float32)
    out = dihedral(batch, np.random.default_rng(2))
    assert out.shape == batch.shape
    for a, b in zip(batch, out):
        candidates = [np.rot90(a, k, axes=(0, 1)) for k in range(4)]
        candidates += [c[:, ::-1] for c in candidates]
        assert any(np.array_equal(b, c) for c in candidates)
