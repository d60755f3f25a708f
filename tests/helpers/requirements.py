"""What a test needs from the machine, and what happens when it is missing.

One rule for every such guard: on CI (``CI=true``) a missing system tool, Debian
package or project extra fails the test, since CI installs them (``.ci/run``) and a
skip would hide that it did not; elsewhere the test skips and says how to get it.
Call these from a test, a fixture or at module level.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["on_ci", "require_module", "require_path", "require_tool"]


def on_ci() -> bool:
    """True when running on CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str, how: str) -> NoReturn:
    reason = f"needs {what} ({how})"
    if on_ci():
        pytest.fail(f"{reason}: required on CI (CI=true), so this fails rather than skips")
    pytest.skip(reason, allow_module_level=True)


def require_tool(name: str, *, package: str | None = None) -> str:
    """The path of the executable ``name``; skips (fails on CI) if it is not installed."""
    found = shutil.which(name)
    if found is None:
        _missing(f"the {name} program", f"apt-get install {package or name}")
    return found


def require_path(path: Path, *, package: str | None = None, how: str | None = None) -> Path:
    """``path`` (a file or folder a package installs); skips (fails on CI) if absent."""
    if not path.exists():
        _missing(str(path), how or f"apt-get install {package}")
    return path


def require_module(name: str, *, extra: str) -> ModuleType:
    """Import ``name``, provided by the project's ``extra``; skips (fails on CI) if absent."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"{name} ({exc})", f"pip install -e '.[{extra}]', as make test does")
