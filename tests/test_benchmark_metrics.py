"""benchmarks/metrics.py: its smoke run (CI) and the README block it generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/metrics.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_readme_block_is_what_the_benchmark_wrote() -> None:
    result = run("--readme", "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_tiny_run_compares_every_metric_with_quantus() -> None:
    pytest.importorskip("quantus", reason="Quantus is a test dependency (pip install -e '.[test]')")
    result = run("--tiny")
    assert result.returncode == 0, result.stderr[-4000:]
    for title in ("RMA", "pointing game", "AUC", "top-k intersection"):
        assert f"| {title} |" in result.stdout
    assert "faster" in result.stdout
