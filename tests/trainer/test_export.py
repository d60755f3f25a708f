"""tf2onnx export and the parity check that guards publishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from services.trainer.export import (  # noqa: E402
    ParityError,
    check_parity,
    export_onnx,
    onnx_predict,
    onnx_session,
)
from services.trainer.model.heads import build_member_models  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((16, 32, 32, 3)).astype(np.float32)


def _model(seed: int):  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(seed)
    return build_member_models("tiny", get_task_definition("inclination"), input_size=32).export


def test_export_names_the_input_image_and_matches_keras(tmp_path: Path, images: np.ndarray) -> None:
    model = _model(1)
    path = export_onnx(model, tmp_path / "m.onnx")
    session = onnx_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape[0] in (None, "unk__0") or not isinstance(
        session.get_inputs()[0].shape[0], int
    )  # dynamic batch
    assert onnx_predict(session, images[:3]).shape == (3, 1)
    diff = check_parity(model, path, images, threads=1)
    assert diff <= 1e-4


def test_parity_check_fails_loudly_on_a_different_model(tmp_path: Path, images: np.ndarray) -> None:
    other = export_onnx(_model(2), tmp_path / "other.onnx")
    with pytest.raises(ParityError, match="differs from Keras"):
        check_parity(_model(1), other, images, threads=1)
