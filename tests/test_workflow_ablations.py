"""config/paper-ablations.yaml on top of config/paper.yaml: exactly the ablation's jobs are added.

A dry run of both config files over the paper's fixture trees plans paper.yaml's jobs unchanged, plus
train / infer / score for each setup that changes a method (AdamW, other learning rates: LP, FLCP and
FT of CLIP ViT-B/32 on ImageNet-1K) and the ablation table; no out-of-distribution job, and the
gradient-of-attention setup reuses paper.yaml's runs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rationality.report.readme import stage_counts
from rationality.resolve import load_config_files
from tests.fixture_trees_paper import REPO, write_paper_config
from tests.test_workflow import planned_jobs, snakemake

pytestmark = pytest.mark.slow

MAIN = "results/tables/pt_ir.csv"
ABLATION = "results/tables/ablations/table3.md"


def planned_outputs(dry_run_output: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans."""
    jobs = re.findall(r"^rule (\w+):\n(?:    (?!output:).*\n)*?    output: ([^,\n]+)", dry_run_output, flags=re.MULTILINE)
    return set(jobs)


def test_ablations_add_exactly_their_own_jobs(tmp_path: Path) -> None:
    write_paper_config(tmp_path)
    shutil.copy(REPO / "config" / "paper-ablations.yaml", tmp_path / "paper-ablations.yaml")
    paper = snakemake(tmp_path, "-n", MAIN, configfile="paper.yaml")
    both = snakemake(tmp_path, "-n", MAIN, ABLATION, configfile=("paper.yaml", "paper-ablations.yaml"))
    assert paper.returncode == 0, paper.stderr[-4000:]
    assert both.returncode == 0, both.stderr[-4000:]
    paper_jobs, both_jobs = planned_outputs(paper.stdout), planned_outputs(both.stdout)
    assert sum(planned_jobs(paper.stdout).values()) == len(paper_jobs) > 0  # every job parsed
    runs = [f"clip-b32/imagenet/{method}@{setup}" for method in ("lp", "flcp", "ft") for setup in ("adamw", "lr")]
    expected = {("train", f"results/checkpoints/{run}/checkpoint.pt") for run in runs}
    expected |= {(rule, f"results/{kind}/{run}.zarr") for run in runs for rule, kind in (("infer", "cache"),
                                                                                         ("score", "scores"))}
    expected.add(("ablation_table", "results/tables/ablations/table3.csv"))
    assert paper_jobs <= both_jobs
    assert both_jobs - paper_jobs == expected
    # the README's job counts (python -m rationality.report.readme) are the workflow's
    counts = {stage.stage: stage.jobs for stage in stage_counts(
        load_config_files([tmp_path / "paper.yaml", tmp_path / "paper-ablations.yaml"]))}
    jobs = planned_jobs(both.stdout)
    assert {rule: jobs[rule] for rule in ("train", "infer", "score")} == \
        {rule: counts[rule] for rule in ("train", "infer", "score")} == {"train": 86, "infer": 86, "score": 86}

