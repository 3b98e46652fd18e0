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
    # the OOD set: 2 corruptions x 2 severities, and the clean set as severity 0
    assert jobs["synthetic_data"] == 1 and jobs["train"] == 9 and jobs["infer_ood"] == 9 * (2 * 2 + 1)


#: Outputs of an earlier run that a config fault must leave as they are. The table is not among them,
#: so that a run asked for it goes ahead (the dataset is regenerated, so weights and checkpoints re-run).
EARLIER_OUTPUTS = ("results/pretrained/tiny-vit.pt", "results/checkpoints/tiny-vit/demo/lp/checkpoint.pt",
                   "results/checkpoints/tiny-vit/demo/ft/checkpoint.pt")
#: fault -> (key path, bad value, the line that must say what is wrong and what is allowed).
FAULTS = {
    "hyper-parameter typo": ("methods.lp.learning_rate", 1e-3, (
        "methods.lp.learning_rate: not a hyper-parameter of kind 'linear_probe'; allowed: adam_beta1, adam_beta2, "
        "batch_size, epochs, eps, head_init, lr, normalize_features, optimizer, precision, prompt_template, shots, "
        "weight_decay")),
    "hyper-parameter type": ("methods.ft.epochs", "ten", "methods.ft.epochs: must be an integer, got 'ten'"),
    "adapter typo": ("models.tiny-vit.adapter", "openclip",
                     "models.tiny-vit.adapter: unknown model adapter 'openclip'; known: albef, blip, open_clip, transformers"),
    "kind typo": ("methods.ft.kind", "fine_tune", "methods.ft.kind: unknown adaptation method 'fine_tune'; known: "
                                                  "coop, external, finetune, flcp, linear_probe, tip_adapter_f, "
                                                  "zero_shot"),
    "reader option typo": ("datasets.demo.options", {"mask_treshold": 0.5},
                           "datasets.demo.options.mask_treshold: unknown key; allowed: mask_threshold"),
    "explainer typo": ("explainers", ["generic_attention", "gradcam"],
                       "explainers[1]: unknown explainer 'gradcam'; known: attention_gradient, attention_rollout, "
                       "generic_attention, raw_attention"),
    "ood corruption typo": ("ood.demo-c.corruptions", ["fgo"], (
        "ood.demo-c.corruptions: unknown corruption 'fgo'; allowed: gaussian_noise, shot_noise, impulse_noise, "
        "defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform, "
        "pixelate, jpeg_compression, speckle_noise, gaussian_blur, spatter, saturate")),
    "bad precision": ("infer.precision", "fp64",
                      "infer.precision: unknown precision 'fp64'; allowed: fp32, tf32, bf16, fp16"),
}


def earlier_run(workdir: Path) -> dict[str, bytes]:
    """Plant the outputs of an earlier run in ``workdir``; their contents by path."""
    contents = {}
    for path in EARLIER_OUTPUTS:
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        contents[path] = f"an earlier run's {path}".encode()
        (workdir / path).write_bytes(contents[path])
    return contents


def assert_refused_in_one_line(result, line: str, workdir: Path, earlier: dict[str, bytes]) -> None:
    """The run failed before any job with ``line`` (Snakemake adds where it stopped), and nothing was deleted."""
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    assert line in output, "\n".join(output)
    assert len(output) <= 4, "\n".join(output)  # profile notice, WorkflowError header, the line, where
    assert {path: (workdir / path).read_bytes() for path in earlier if (workdir / path).exists()} == earlier


@pytest.mark.parametrize("fault", FAULTS)
def test_a_config_fault_is_refused_before_any_job_runs(fault: str, tmp_path: Path) -> None:
    path, value, line = FAULTS[fault]
    config = tiny_config()
    *parents, last = path.split(".")
    target = config
    for part in parents:
        target = target[part]
    target[last] = value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    earlier = earlier_run(tmp_path)
    result = snakemake(tmp_path, "results/tables/pt_ir.csv")  # a real run, not a dry run
    assert_refused_in_one_line(result, f"config.yaml: {line}", tmp_path, earlier)


def test_a_threshold_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    """``--config threshold=nan`` once gave PT 0.000 with exit status 0."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    earlier = earlier_run(tmp_path)
    result = snakemake(tmp_path, "results/tables/pt_ir.csv", config=("threshold=nan",))
    assert_refused_in_one_line(result, "config.yaml + --config: threshold: must be a finite number, got nan", tmp_path,
                               earlier)


def test_seeds_train_every_trained_method_once_per_seed(tmp_path: Path) -> None:
    """seeds: [0, 1] adds the runs lp@seed1 and ft@seed1 (zero-shot runs once) and the seeds table."""
    config = tiny_config()
    config["seeds"] = [0, 1]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "-p")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert set(method_specs(output)) == {f"results/checkpoints/tiny-vit/demo/{run}"
                                         for run in ("zs", "lp", "ft", "lp@seed1", "ft@seed1")}
    assert re.search(r"train .*--seed 1 .*--out results/checkpoints/tiny-vit/demo/lp@seed1", output)
    jobs = planned_jobs(output)
    assert (jobs["train"], jobs["score"], jobs["seeds_table"], jobs["claims_table"]) == (5, 5, 1, 1)
