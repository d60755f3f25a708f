"""CI's script and the rule for missing system tools: on CI they fail the run, elsewhere skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.requirements import require_module, require_path, require_tool

REPO = Path(__file__).resolve().parents[2]
FAKE_MAKE = """#!/usr/bin/env bash
echo "$*" >> "{log}"
if [[ "$1" == system-deps ]]; then exit {deps_status}; fi
exit 0
"""


def run_ci(tmp_path: Path, *, ci: str, deps_status: int) -> tuple[int, list[str]]:
    """Run .ci/run with a stand-in ``make`` that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "make.log"
    make = bin_dir / "make"
    make.write_text(FAKE_MAKE.format(log=log, deps_status=deps_status))
    make.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CI": ci,
        "SYSTEM_DEPS_RETRY_SECONDS": "0",
    }
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, [c.split()[0] for c in calls]


def test_on_ci_a_failing_system_deps_is_retried_then_fails_the_run(tmp_path: Path) -> None:
    status, calls = run_ci(tmp_path, ci="true", deps_status=2)
    assert status != 0
    assert calls == ["system-deps"] * 3  # never reaches `make test`


def test_on_ci_installed_system_deps_lead_to_the_tests(tmp_path: Path) -> None:
    status, calls = run_ci(tmp_path, ci="true", deps_status=0)
    assert (status, calls) == (0, ["system-deps", "test"])


def test_without_ci_set_the_ci_script_still_fails_on_missing_system_deps(tmp_path: Path) -> None:
    # .ci/run is CI's own script: it never turns a missing package into skipped tests,
    # even when the runner does not set CI=true.
    status, calls = run_ci(tmp_path, ci="", deps_status=2)
    assert status != 0
    assert calls == ["system-deps"] * 3


@pytest.mark.parametrize(
    "require",
    [
        lambda: require_tool("skyserve-no-such-tool", package="no-such-package"),
        lambda: require_path(Path("/no/such/folder"), package="no-such-package"),
        lambda: require_module("skyserve_no_such_module", extra="trainer"),
    ],
)
def test_a_missing_requirement_skips_off_ci_and_fails_on_ci(
    require, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="needs"):
        require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required on CI"):
        require()


def test_a_present_requirement_is_returned() -> None:
    assert require_tool("bash").endswith("bash")
    assert require_path(REPO) == REPO
    assert require_module("json", extra="none").__name__ == "json"
