"""The GalSim renderer: deterministic per seed, and the shape really carries the inclination."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("galsim")

from services.trainer.data.galaxies import render_galaxy, render_galaxy_png  # noqa: E402
from services.trainer.data.render import (  # noqa: E402
    inclination_from_axis_ratio,
    intrinsic_axis_ratio,
)
from shared.preprocessing import decode_image  # noqa: E402


def test_same_seed_same_image_and_truth() -> None:
    a = render_galaxy(1234, measure=True)
    b = render_galaxy(1234, measure=True)
    assert np.array_equal(a.image, b.image)
    assert a.truth == b.truth
    assert 45.0 <= a.truth["inclination_deg"] <= 90.0


def test_different_seeds_differ() -> None:
    assert not np.array_equal(render_galaxy(1, size=96).image, render_galaxy(2, size=96).image)


def test_png_is_a_readable_image_of_the_requested_size() -> None:
    png = render_galaxy_png(70.0, seed=3, size=112)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png == render_galaxy_png(70.0, seed=3, size=112)
    image = decode_image(png, max_pixels=10**6)
    assert image.shape == (112, 112, 3)
    assert image.max() > 0.5  # the galaxy is bright on a dark sky in a clean cutout


def test_edge_on_measures_much_flatter_than_45_degrees() -> None:
    for seed in (5, 6, 7):
        edge_on = render_galaxy(seed, inclination_deg=90.0, clean=True, size=128, measure=True)
        tilted = render_galaxy(seed, inclination_deg=45.0, clean=True, size=128, measure=True)
        q_edge, q_45 = edge_on.truth["measured_axis_ratio"], tilted.truth["measured_axis_ratio"]
        assert q_edge < 0.35
        assert q_45 > 0.6
        assert q_edge < 0.5 * q_45


def test_classical_formula_inverts_the_oblate_axis_ratio() -> None:
    inclinations = np.array([45.0, 60.0, 75.0, 89.0])
    q = intrinsic_axis_ratio(inclinations, 0.2)
    assert np.allclose(inclination_from_axis_ratio(q, 0.2), inclinations, atol=1e-6)
    assert inclination_from_axis_ratio(0.1, 0.2) == pytest.approx(90.0)
