"""What the workflow makes of a config: a given file stands alone, and every key is checked before any job runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import REPO, planned_jobs, snakemake, tiny_config

pytestmark = pytest.mark.slow


def method_specs(dry_run_output: str) -> dict[str, dict]:
    """Checkpoint directory -> the method spec its ``rationality train`` command receives (``-n -p`` output)."""
    commands = re.findall(r"^Shell command: (?:rationality|torchrun .*?) train (.*)$", dry_run_output, re.MULTILINE)
    return {re.search(r"--out (\S+)", command)[1]: json.loads(re.search(r"--method '([^']*)'", command)[1])
            for command in commands}


def clone_layout(workdir: Path) -> None:
    """The demo config where a clone has it, so that Snakemake runs in ``workdir`` as in the repository's root."""
    (workdir / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")


def table_threshold(dry_run_output: str) -> str:
    return re.search(r"^Shell command: rationality table .*--threshold (\S+)", dry_run_output, re.MULTILINE)[1]


def test_a_config_file_stands_alone(tmp_path: Path) -> None:
    """Nothing of the demo (its fine-tuning learning rate, its out-of-distribution set) leaks into a user's config."""
    clone_layout(tmp_path)
    config = tiny_config()
    del config["ood"]
    config["methods"]["ft"] = {"kind": "finetune", "epochs": 1}  # fine-tuning's own default learning rate
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "-p", configfile="my.yaml")  # the default target: every table and figure
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert method_specs(output)["results/checkpoints/tiny-vit/demo/ft"] == {"kind": "finetune", "epochs": 1}
    jobs = planned_jobs(output)
    assert jobs["train"] == 3 and not {"infer_ood", "score_ood", "ood_table", "ood_figure"} & set(jobs)


def test_config_files_merge_in_order(tmp_path: Path) -> None:
    clone_layout(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config()))
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"threshold": 0.7, "methods": {"ft": {"lr": 2.0e-5}}}))
    result = snakemake(tmp_path, "-n", "-p", "results/tables/pt_ir.csv", configfile=("base.yaml", "more.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert table_threshold(output) == "0.7"
    assert method_specs(output)["results/checkpoints/tiny-vit/demo/ft"] == {
        "kind": "finetune", "lr": 2.0e-5, "epochs": 1, "batch_size": 32}  # the later file's key, the earlier's others


def test_without_a_config_file_the_demo_runs_from_any_directory(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", configfile=())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = planned_jobs(output)
    assert jobs["synthetic_data"] == 1 and jobs["train"] == 6 and jobs["infer_ood"] == 6 * 2 * 2
