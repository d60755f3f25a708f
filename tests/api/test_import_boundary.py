"""The API builds and serves without the worker's code: no ONNX Runtime, no cutout providers.

Cutout fetching (``services/worker/cutouts.py``), orientation and their settings are the
worker's alone (issue 11); this runs the API's import graph in a fresh interpreter with
those modules made unimportable and renders an upload's seen image, as the API does
while a job waits.
"""

from __future__ import annotations

import subprocess
import sys

from shared.settings import REPO_ROOT

_BLOCKED = ("onnxruntime", "services.worker", "tensorflow")

_SCRIPT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import now raises ModuleNotFoundError
from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.seen import seen_png
from tests.helpers.images import png_bytes
create_app(ApiSettings())
assert not hasattr(ApiSettings(), "cutout_provider")  # a worker setting
assert seen_png(png_bytes(40), max_pixels=10**6).startswith(b"\\x89PNG")
print("ok")
"""


def test_the_api_imports_no_worker_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(blocked=_BLOCKED)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
