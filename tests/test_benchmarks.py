"""Every benchmark under benchmarks/ runs in its tiny mode (``--tiny``: seconds), so none can rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Scripts under benchmarks/ that measure nothing: report.py writes the README's GPU figures from the committed
#: results (tests/test_readme.py runs its --check).
NOT_BENCHMARKS = {"report.py"}
BENCHMARKS = sorted(path for path in (REPO / "benchmarks").glob("*.py") if path.name not in NOT_BENCHMARKS)
#: What each benchmark prints as its results: a Markdown table, or (storage.py) its JSON report.
RESULTS_MARKER = {"storage.py": '"bytes_per_sample"'}


def test_there_are_benchmarks() -> None:
    assert {path.name for path in BENCHMARKS} >= {"score.py", "infer.py"}


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_runs_in_tiny_mode(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--tiny"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert RESULTS_MARKER.get(script.name, "| --- |") in result.stdout, result.stdout
