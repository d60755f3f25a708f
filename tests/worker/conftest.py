"""Worker fixtures: a real registry seeded with tiny real ONNX models, and test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.registry import Calibration, Manifest
from tests.worker.onnx_models import SIZE, publish, regression_members


@pytest.fixture
def regression_v1(registry_root: Path) -> Manifest:
    """Version 1 of 'inclination': two members, TTA identity + rot180, a bias correction."""
    return publish(
        registry_root,
        regression_members(),
        calibration=Calibration(bias_m=0.1, bias_b=-2.0),
    )


@pytest.fixture
def images() -> np.ndarray:
    """Five different (8, 8, 3) images in [0, 1]."""
    rng = np.random.default_rng(7)
    return rng.random((5, SIZE, SIZE, 3), dtype=np.float32)
