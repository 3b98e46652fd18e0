"""Every benchmark under benchmarks/ runs in its tiny mode (``--tiny``: seconds), so none can rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert {path.name for path in BENCHMARKS} >= {"score.py", "infer.py"}


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_runs_in_tiny_mode(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--tiny"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "| --- |" in result.stdout, result.stdout  # its results, as a Markdown table
