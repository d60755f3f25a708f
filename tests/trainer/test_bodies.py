"""Bodies: IncliNET's models as published, every architecture under a regression head."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from services.trainer.model.bodies import (  # noqa: E402
    ARCHITECTURES,
    IsophoteMoments,
    flops_per_image,
    get_architecture,
)
from services.trainer.model.heads import build_member_models  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402


def build_model(name: str, task):  # type: ignore[no-untyped-def]
    """The served (export) model of ``name`` at its native size."""
    return build_member_models(name, task, input_size=get_architecture(name).input_size).export


@pytest.mark.parametrize(
    ("name", "params"), [("model4", 1_631_169), ("model5", 2_522_705), ("model6", 1_680_369)]
)
def test_inclinet_models_have_their_published_sizes(name: str, params: int) -> None:
    model = build_model(name, get_task_definition("inclination"))
    assert model.input_shape == (None, 128, 128, 3)
    assert model.output_shape == (None, 1)
    assert model.count_params() == params  # 1.63 M, 2.52 M, 1.68 M in the paper
    assert model.layers[-1].activation.__name__ == "tanh"


def test_every_architecture_builds_a_regression_model() -> None:
    task = get_task_definition("inclination")
    for name, arch in ARCHITECTURES.items():
        if name.startswith("model"):
            continue  # built above
        model = build_model(name, task)
        assert model.input_shape == (None, arch.input_size, arch.input_size, 3)
        out = np.asarray(model(np.zeros((2, arch.input_size, arch.input_size, 3), "float32")))
        # tanh may round to exactly ±1 in float32 for an untrained net: bounded, not open.
        assert out.shape == (2, 1) and np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)


def test_unknown_names_are_reported() -> None:
    with pytest.raises(ValueError, match="compact"):
        get_architecture("resnet-9000")


def test_isophote_moments_see_ellipticity_at_any_position_angle() -> None:
    size = 64
    ys, xs = np.mgrid[:size, :size] - (size - 1) / 2.0

    def ellipse(q: float, angle: float) -> np.ndarray:
        u = xs * np.cos(angle) + ys * np.sin(angle)
        v = -xs * np.sin(angle) + ys * np.cos(angle)
        plane = np.exp(-np.hypot(u, v / q) / 5.0)
        return np.repeat(plane[None, :, :, None], 3, axis=-1).astype("float32")

    layer = IsophoteMoments(4)
    round_, flat, flat_turned = (np.asarray(layer(ellipse(q, a)))[0, :4]
                                 for q, a in ((1.0, 0.0), (0.3, 0.0), (0.3, 1.0)))
    assert np.all(round_ < 0.05)
    expected = (1 - 0.3**2) / (1 + 0.3**2)
    assert np.allclose(flat, expected, atol=0.08)  # smoothing and pixels round it a little
    # Outer isophotes cover many pixels; the core (last level) is coarser.
    assert np.allclose(flat[:3], flat_turned[:3], atol=0.03)


def test_flops_count_convolutions_and_dense_layers() -> None:
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)  # 6 x 6 x 4 outputs, 27 multiply-adds each
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))  # 144 inputs x 2
    assert flops_per_image(keras.Model(inputs, outputs)) == 2 * (6 * 6 * 4 * 27 + 144 * 2)
    task = get_task_definition("inclination")
    # The compact default costs a few MFLOP, a small fraction of IncliNET's smallest model.
    compact, model4 = (flops_per_image(build_model(n, task)) for n in ("compact", "model4"))
    assert 1e6 < compact < model4 / 30
