"""The API stays light: building and importing it loads no ONNX Runtime, onnx or TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from shared.settings import REPO_ROOT


def test_the_api_imports_no_inference_library() -> None:
    # A fresh interpreter: this test process may have imported them for other tests.
    code = (
        "import sys\n"
        "from services.api.app import create_app\n"
        "create_app()\n"
        "print(sorted(m for m in ('onnxruntime', 'onnx', 'tensorflow', 'shared.fused')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
