"""Synthetic galaxy sets: exactly what shared preprocessing makes of the same PNG, balanced bins."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("galsim")

from services.trainer.data.galaxies import (  # noqa: E402
    balanced_inclinations,
    galaxy_set,
    render_galaxy,
)
from services.trainer.data.render import encode_png  # noqa: E402
from services.trainer.fit import dihedral  # noqa: E402
from shared.preprocessing import preprocess  # noqa: E402
from shared.registry import InputSpec  # noqa: E402


@pytest.mark.parametrize("spec", [InputSpec(size=32), InputSpec(size=48, scaling="symmetric")])
def test_set_arrays_equal_shared_preprocess_of_the_same_png(spec: InputSpec) -> None:
    data = galaxy_set(6, seed=11, spec=spec)
    assert data.x.shape == (6, spec.size, spec.size, 3)
    for array, inclination, truth in zip(data.x, data.y, data.truth):
        rendered = render_galaxy(truth["seed"], inclination_deg=truth["inclination_deg"])
        png = encode_png(rendered.image)
        assert np.array_equal(array, preprocess(png, spec))
        assert truth["inclination_deg"] == pytest.approx(float(inclination), abs=1e-5)


def test_set_is_deterministic_seeds_differ_and_only_asked_sets_are_measured() -> None:
    spec = InputSpec(size=32)
    a = galaxy_set(4, seed=3, spec=spec)
    b = galaxy_set(4, seed=3, spec=spec, measure=True)
    c = galaxy_set(4, seed=4, spec=spec)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert "measured_axis_ratio" not in a.truth[0] and "measured_axis_ratio" in b.truth[0]


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
