"""A short schemathesis pass in the suite; ``make fuzz`` runs the long one (>= 1,000 cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.openapi_fuzz import count_cases, run_fuzz

pytestmark = pytest.mark.integration


def test_schemathesis_finds_no_failure(redis_url: str, tmp_path: Path) -> None:
    report = tmp_path / "events.ndjson"
    code, output = run_fuzz(redis_url, max_examples=3, report=report)
    cases = count_cases(report)
    assert code == 0, output[-6000:]
    assert "0 unique failure" in output or "No issues found" in output or "failure" not in output.split("SUMMARY")[-1], output[-3000:]
    assert cases >= 100, f"only {cases} cases ran\n{output[-2000:]}"
