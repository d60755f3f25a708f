"""Print the requirements of skyserve for the given extras, one per line.

The Dockerfiles copy only ``pyproject.toml`` and this script before installing
dependencies, so the dependency layer is rebuilt only when ``pyproject.toml``
changes, not on every source edit. ``pyproject.toml`` stays the single source of
truth: no separate requirements files to keep in step.

Usage: ``python deploy/pyproject_deps.py [EXTRA ...] > requirements.txt``
(raises ``SystemExit`` naming the extra when an extra is unknown).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Return the base dependencies followed by those of each extra, without duplicates.

    Parameters
    ----------
    pyproject : Path
        The project's ``pyproject.toml``.
    extras : list of str
        Names under ``[project.optional-dependencies]``.

    Returns
    -------
    list of str
        PEP 508 requirement strings, in order of first appearance.

    Raises
    ------
    SystemExit
        If an extra is not declared in ``pyproject.toml``.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    for req in project.get("dependencies", []):
        if req not in out:
            out.append(req)
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; declared: {sorted(optional)}")
        for req in optional[extra]:
            if req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    # deploy/pyproject_deps.py -> the repository root (the image builds mirror that layout).
    root = Path(__file__).resolve().parent.parent
    print("\n".join(requirements(root / "pyproject.toml", sys.argv[1:])))
