"""The Snakemake workflow end to end on a tiny demo, and what re-runs when which option changes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = pytest.mark.slow


def tiny_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["synthetic"]["demo"]["samples_per_class"] = {"pretrain": 4, "train": 4, "test": 3}
    config["pretrain"]["tiny-vit"]["epochs"] = 1
    config["synthetic"]["demo"]["image_size"] = [48, 40]
    config["methods"]["lp"]["epochs"] = 2
    config["methods"]["ft"]["epochs"] = 1
    # the other methods and the SigLIP-style model have tests of their own
    config["runs"] = {"models": ["tiny-vit"], "datasets": ["demo"], "methods": ["zs", "lp", "ft"]}
    config["ood"]["demo-c"].update(corruptions=["fog"], severities=[3])
    return config


def snakemake(workdir: Path, *args: str, configfile: str | tuple[str, ...] = "config.yaml",
              config: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's workflow in ``workdir`` (options that take lists go last).

    Args:
        configfile: config file(s) in ``workdir`` given with --configfile, several merged in order; ``()``
            for none (the demo).
    """
    configfiles = [str(workdir / name) for name in ((configfile,) if isinstance(configfile, str) else configfile)]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(SNAKEMAKE), *args, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
         *(("--configfile", *configfiles) if configfiles else ()), *(("--config", *config) if config else ())],
        capture_output=True, text=True, env=env, timeout=900)


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(count) for rule, count in counts.items()}


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    result = snakemake(workdir, "results/tables/pt_ir.csv")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_demo_produces_the_table(finished_demo: Path) -> None:
    table = pd.read_csv(finished_demo / "results" / "tables" / "pt_ir.csv")
    metrics = tiny_config()["scoring"]["metrics"]
    assert set(table["method"]) == {"zs", "lp", "ft"} and set(table["metric"]) == set(metrics)
    assert set(table["start_layer_policy"]) == {"paper", "all_blocks", "last_block"}
    assert len(table) == 3 * 2 * 3 * len(metrics)  # methods x explainers x policies x metrics
    assert (table["n"] == 4 * 3).all()
    assert (table[["rr", "rw", "wr", "ww"]].sum(axis=1) == table["n"]).all()
    assert (table[table["metric"] == "rma"]["threshold"] == 0.5).all()
    paper = table[table["start_layer_policy"] == "paper"].groupby("method")["start_layer"].agg(set)
    assert paper.to_dict() == {"zs": {3}, "lp": {0}, "ft": {0}}  # tiny model: 4 blocks
    for kind, suffix in (("logs", ".log"), ("benchmarks", ".tsv")):
        jobs = ["synthetic_data/demo", "pretrain/tiny-vit", "masks/demo/test-r64c64",
                "project_masks/demo/test-r64c64-grid8x8", "tables/pt_ir"] + [
            f"{rule}/tiny-vit/demo/{method}" for rule in ("train", "infer", "score") for method in ("zs", "lp", "ft")]
        missing = [job for job in jobs if not (finished_demo / "results" / kind / f"{job}{suffix}").is_file()]
        assert not missing, f"no {kind} for {missing}"
    for log in (finished_demo / "results" / "logs").rglob("*.log"):
        text = log.read_text()
        assert "\r" not in text and "initialized randomly" not in text, log  # progress as lines, no false alarm
        if log.relative_to(finished_demo / "results" / "logs").parts[0] in ("pretrain", "train", "infer"):
            first = text.splitlines()[0]  # each job computes on the one thread Snakemake gave it
            assert re.fullmatch(r"rationality (pretrain|train|infer): torch \S+, 1 thread, CPU .+ \(\w+ kernels\)", first), log


def test_new_threshold_reruns_only_the_table(finished_demo: Path) -> None:
    result = snakemake(finished_demo, "-n", "results/tables/pt_ir.csv", config=("threshold=0.6",))
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result.stdout + result.stderr) == {"pt_ir_table": 1}


@pytest.fixture(scope="module")
def finished_report(finished_demo: Path) -> Path:
    """The demo with every table and figure (made from its stores) and the Snakemake report of them."""
    result = snakemake(finished_demo, "tables_and_figures")
    assert result.returncode == 0, result.stderr[-4000:]
    report = snakemake(finished_demo, "--report", "results/report.html")  # the default target: everything
    assert report.returncode == 0, report.stderr[-4000:]
    return finished_demo


def test_demo_tables_figures_and_report(finished_report: Path) -> None:
    from PIL import Image

    results = finished_report / "results"
    paper = pd.read_csv(results / "tables" / "paper.csv")
    assert set(paper.metric) == {"accuracy", "pt", "ir"} and set(paper.method) == {"zs", "lp", "ft"}
    assert "### accuracy" in (results / "tables" / "paper.md").read_text()
    assert (results / "tables" / "paper.tex").read_text().count(r"\begin{table}") == 1 + 2 * 2 * 3
    ood = pd.read_csv(results / "tables" / "ood.csv")
    # severity 0 is the set's clean images in its own frame (corruption "none")
    assert set(zip(ood.corruption, ood.severity)) == {("none", 0), ("fog", 3)} and set(ood.method) == {"zs", "lp", "ft"}
    bootstrap = pd.read_csv(results / "tables" / "bootstrap.csv")
    assert len(bootstrap) == 3 * 2 * 3 * len(tiny_config()["scoring"]["metrics"])
    assert (bootstrap.accuracy_low <= bootstrap.accuracy).all()
    claims = pd.read_csv(results / "tables" / "claims.csv")
    assert set(claims.claim) == {"C1", "C2", "C3"} and set(claims.method) == {"lp", "ft"}
    assert set(claims.verdict) <= {"holds", "reversed", "inconclusive"} and set(claims.metric.dropna()) == set(
        tiny_config()["scoring"]["metrics"])
    paired = pd.read_csv(results / "tables" / "paired.csv")
    assert set(paired.method) == {"lp", "ft"} and (paired.n == 4 * 3).all()
    figures = ["threshold_tiny-vit_demo", "start_layer_tiny-vit_demo", "gallery_tiny-vit_demo",
               "gallery_tiny-vit_demo_changed", "ood_tiny-vit", "ood_tiny-vit_per_corruption",
               "paired_tiny-vit_demo", "claims"]
    for name in figures:
        with Image.open(results / "figures" / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 200
        assert (results / "logs" / "figures" / f"{name}.log").is_file()
        assert (results / "benchmarks" / "figures" / f"{name}.tsv").is_file()
    html = (results / "report.html").read_text()
    for caption in ("Prediction Trustworthiness", "Heatmaps of tiny-vit on demo", "RMA threshold 0.5"):
        assert caption in html


def test_report_captions_describe_the_outputs_not_the_current_config(finished_report: Path) -> None:
    """A report built after the config changed, from outputs made before, captions what the files hold."""
    result = snakemake(finished_report, "--report", "results/report-later.html",
                       config=("threshold=0.6", "undefined_policy=valid"))
    assert result.returncode == 0, result.stderr[-4000:]
    captions = report_captions(finished_report / "results" / "report-later.html")
    assert len(captions) == 14  # 6 tables, 8 figures
    thresholds = [re.findall(r"threshold ([\d.]*\d)", caption) for caption in captions]
    assert sum(map(len, thresholds)) == 9 and {value for found in thresholds for value in found} == {"0.5"}
    assert sum("counted as invalid" in caption for caption in captions) == 8 and not any("counted as valid" in caption for caption in captions)
    assert sum("generic_attention heatmaps" in caption for caption in captions) == 2  # the out-of-distribution figures


def report_captions(report: Path) -> list[str]:
    """The captions of a Snakemake HTML report, as text (JSON strings holding HTML in the report's data)."""
    encoded = re.findall(r'"caption": ("(?:[^"\\]|\\.)*")', report.read_text())
    return [" ".join(re.sub(r"<[^>]+>", "", json.loads(text)).split()) for text in encoded]


def test_new_threshold_reruns_tables_and_the_figures_that_show_it(finished_report: Path) -> None:
    tables = ("results/tables/pt_ir.csv", "results/tables/paper.md", "results/tables/paper.tex",
              "results/tables/bootstrap.csv", "results/figures/threshold_tiny-vit_demo.png")
    result = snakemake(finished_report, "-n", *tables, config=("threshold=0.6",))
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result.stdout + result.stderr) == {"pt_ir_table": 1, "bootstrap_table": 1}
    result = snakemake(finished_report, "-n", "tables_and_figures", config=("threshold=0.6",))
    rethresholded = {"pt_ir_table": 1, "bootstrap_table": 1, "paired_table": 1, "start_layer_figure": 1,
                     "gallery": 1, "gallery_changed": 1, "ood_figure": 1, "ood_figure_per_corruption": 1,
                     "ood_table": 1, "paired_figure": 1, "tables_and_figures": 1}
    assert planned_jobs(result.stdout + result.stderr) == rethresholded
    # another metric's threshold re-runs the same tables and figures, no model and not the claims table
    config = tiny_config()
    config["scoring"]["thresholds"] = {"auc": 0.8}
    (finished_report / "config-auc.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_report, "-n", "tables_and_figures", configfile="config-auc.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result.stdout + result.stderr) == rethresholded
    assert planned_jobs(snakemake(finished_report, "-n", "tables_and_figures").stdout) == {}


def test_ood_figure_is_planned_from_clean_and_corrupted_scores(finished_demo: Path) -> None:
    config = tiny_config()
    config["ood"] = {"demo-c": {"dataset": "demo", "corruptions": ["fog", "contrast"], "severities": [1, 3]}}
    (finished_demo / "config-ood.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_demo, "-n", "results/figures/ood_tiny-vit.png", configfile="config-ood.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = planned_jobs(result.stdout + result.stderr)
    # 3 methods x (the clean images in the set's frame + 2 corruptions x 2 severities)
    assert jobs["ood_figure"] == 1 and jobs["score_ood"] == 3 * (1 + 2 * 2) and "score" not in jobs


def test_new_normalization_reruns_scoring_not_the_model(finished_demo: Path) -> None:
    config = tiny_config()
    config["scoring"]["normalization"] = "none"
    (finished_demo / "config-none.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_demo, "-n", "results/tables/pt_ir.csv", configfile="config-none.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result.stdout + result.stderr) == {"score": 3, "pt_ir_table": 1}


def test_run_settings_and_resources_rerun_nothing(finished_demo: Path) -> None:
    """Batch size, device, worker counts, the DDP launcher and every resource change how a job runs,
    not what it computes: none of them re-runs a job."""
    config = tiny_config()
    config["infer"].update(batch_size=7, device="cpu", num_workers=1)
    config["train"] = {"device": "cpu", "num_workers": 1, "nproc_per_node": 2}
    config["resources"] = {stage: {"threads": 2, "mem_mb": 100, "runtime": 5} for stage in config["resources"]}
    config["resources"]["train"]["gpu"] = config["resources"]["infer"]["gpu"] = 1
    (finished_demo / "config-run.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_demo, "-n", "results/tables/pt_ir.csv", configfile="config-run.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result.stdout + result.stderr) == {}


def test_model_without_a_cls_token_runs_through_the_workflow(tmp_path: Path) -> None:
    """The demo's SigLIP-style model (attention pooling), pretrained, adapted and explained by the same rules."""
    import xarray as xr

    config = tiny_config()
    config["pretrain"]["tiny-siglip"]["epochs"] = 1
    config["runs"] = {"models": ["tiny-siglip"], "datasets": ["demo"], "methods": ["zs", "ft"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/tables/pt_ir.csv")
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results" / "tables" / "pt_ir.csv")
    assert set(table["model"]) == {"tiny-siglip"} and (table["n"] == 4 * 3).all()
    paper = table[table["start_layer_policy"] == "paper"].groupby("method")["start_layer"].agg(set)
    assert paper.to_dict() == {"zs": {3}, "ft": {0}}
    cache = xr.open_zarr(tmp_path / "results" / "cache" / "tiny-siglip" / "demo" / "zs.zarr")
    assert (cache.sizes["gy"], cache.sizes["gx"], cache.sizes["start_layer"]) == (8, 8, 4)
    assert (cache.heatmap.values > 0).any()


def test_a_method_the_model_cannot_run_stops_the_workflow_before_any_job(tmp_path: Path) -> None:
    config = tiny_config()
    config["runs"] = [config["runs"], {"models": ["tiny-siglip"], "datasets": ["demo"], "methods": ["coop"]}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/tables/pt_ir.csv")
    assert result.returncode != 0
    assert "method 'coop' needs learned_text_context, which model 'tiny-siglip'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_invalid_config_key_is_refused(tmp_path: Path) -> None:
    config = tiny_config()
    config["models"]["tiny-vit"]["pretrianed"] = "openai"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "pretrianed" in result.stdout + result.stderr


def test_rescore_from_the_cli_matches_the_table(finished_demo: Path) -> None:
    stores = sorted(str(p) for p in (finished_demo / "results" / "scores").glob("*/*/*.zarr"))
    out = finished_demo / "rescored.csv"
    rationality = shutil.which("rationality", path=str(SNAKEMAKE.parent))
    subprocess.run([rationality, "table", *stores, "--threshold", "0.5", "--out", str(out)], check=True,
                   capture_output=True)
    ours = pd.read_csv(out).sort_values(["method", "explainer", "start_layer_policy"]).reset_index(drop=True)
    workflow = pd.read_csv(finished_demo / "results" / "tables" / "pt_ir.csv").sort_values(
        ["method", "explainer", "start_layer_policy"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, workflow)


def test_demo_through_the_generic_cluster_executor(tmp_path: Path) -> None:
    """Every job is submitted as its own process (profiles/local-cluster) and the demo still completes."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    result = snakemake(tmp_path, "results/tables/pt_ir.csv", "--profile", str(REPO / "profiles" / "local-cluster"))
    assert result.returncode == 0, result.stderr[-4000:]
    submitted = re.findall(r"with external jobid '(\d+)'", result.stdout + result.stderr)
    assert len(set(submitted)) == 14  # every job of the demo, each its own process
    table = pd.read_csv(tmp_path / "results" / "tables" / "pt_ir.csv")
    assert set(table["method"]) == {"zs", "lp", "ft"} and (table["n"] == 12).all()


def test_local_runs_schedule_one_gpu_job_at_a_time(finished_demo: Path) -> None:
    """The default workflow profile caps the `gpu` resource at 1: GPU jobs never overlap, even with free cores."""
    config = tiny_config()
    config["resources"]["infer"]["gpu"] = 1
    (finished_demo / "config-gpu.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_demo, "results/tables/pt_ir.csv", "--forcerun", "infer", configfile="config-gpu.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    events = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)|^Finished jobid: (\d+)", output,
                        flags=re.MULTILINE)
    running, most, started = set(), 0, 0
    for rule, jobid, finished in events:
        if rule == "infer":
            running.add(jobid)
            started += 1
        running.discard(finished)
        most = max(most, len(running))
    assert started == 3 and most == 1


def test_paper_config_plans_the_full_grid_over_fixture_trees(tmp_path: Path) -> None:
    """config/paper.yaml on fixture trees: the datasets check passes and a dry run through
    profiles/slurm plans 4 models x 4 datasets x ZS/LP/FLCP/FT + CoOp and Tip-Adapter-F for the two
    CLIP models, and every out-of-distribution run, each job with the resources its rule declares from
    the config (neither the SLURM profile nor the local GPU cap changes them): with 2 processes per
    training job, a training job asks for 2 GPUs."""
    from rationality.config import ood_runs, validate_config
    from tests.fixture_trees_paper import write_paper_config

    config = write_paper_config(tmp_path)
    config["train"]["nproc_per_node"] = 2
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    check = subprocess.run([str(SNAKEMAKE.with_name("rationality")), "datasets", "check", str(tmp_path / "paper.yaml")],
                           capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "all OK" in check.stdout

    result = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), configfile="paper.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = planned_jobs(result.stdout)
    asked = {}
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.MULTILINE):
        resources = dict(re.findall(r"(\w+)=([^,]+)", resources))
        asked.setdefault(rule, set()).add(tuple(resources.get(name) for name in ("gpu", "mem_mb", "runtime")))
    assert asked["train"] == {("2", "32000", "720")}
    assert asked["infer"] == asked["infer_ood"] == {("1", "32000", "720")}
    assert asked["score"] == asked["score_ood"] == {(None, "16000", "120")}
    runs = 4 * 4 * 4 + 2 * 4 * 2
    assert (jobs["train"], jobs["infer"], jobs["score"]) == (runs, runs, runs)
    assert jobs["infer_ood"] == jobs["score_ood"] == len(ood_runs(validate_config(config))) == 2 * 4 * (1 + 6 * 5)
    assert jobs["masks"] == 4 + 1  # the clean test splits and ImageNet-C's frame
    assert jobs["project_masks"] == 2 * (4 + 1)  # 7x7 (ViT-B/32) and 14x14 grids
    check_ood_plan(result.stdout, full=False)


def test_paper_ood_full_plans_every_corruption_for_every_run_on_imagenet(tmp_path: Path) -> None:
    """The opt-in config/paper-ood-full.yaml on top of paper.yaml: 19 corruptions x 5 severities
    (and the clean frame) for all 20 runs on ImageNet."""
    from tests.fixture_trees_paper import write_paper_config

    write_paper_config(tmp_path)
    result = snakemake(tmp_path, "-n", configfile=("paper.yaml", str(REPO / "config" / "paper-ood-full.yaml")))
    assert result.returncode == 0, result.stderr[-4000:]
    check_ood_plan(result.stdout, full=True)


def planned_outputs(dry_run_output: str, rule: str) -> list[str]:
    """The output paths of every job of ``rule`` in a dry run's job listing."""
    return [path for job in dry_run_output.split("\nrule ")[1:] if job.startswith(f"{rule}:")
            for path in re.search(r"^\s+output: (.+)$", job, flags=re.MULTILINE).group(1).split(", ")]


def planned_inputs(dry_run_output: str, rule: str) -> list[list[str]]:
    """The input paths of each job of ``rule`` in a dry run's job listing."""
    return [re.search(r"^\s+input: (.+)$", job, flags=re.MULTILINE).group(1).split(", ")
            for job in dry_run_output.split("\nrule ")[1:] if job.startswith(f"{rule}:")]


def _ood_caches(models: list[str], methods: list[str], corruptions: list[str]) -> set[str]:
    cells = [("none", 0)] + [(c, s) for c in corruptions for s in range(1, 6)]
    return {f"results/cache/{model}/imagenet-c/{method}/{corruption}-s{severity}.zarr"
            for model in models for method in methods for corruption, severity in cells}


def check_ood_plan(dry_run_output: str, full: bool) -> None:
    """Exactly the out-of-distribution stores of the paper's Figures 4, 5 and 7 (``full``: of
    paper-ood-full.yaml) are planned, and severity 0 of every figure is the val set in ImageNet-C's
    256/224 frame (``none-s0``), never the main table's store."""
    from rationality.data.corruptions import CORRUPTIONS

    if full:
        expected = _ood_caches(["clip-b32", "clip-b16", "blip", "albef"], ["zs", "lp", "flcp", "ft"], list(CORRUPTIONS))
        expected |= _ood_caches(["clip-b32", "clip-b16"], ["coop", "tip_adapter_f"], list(CORRUPTIONS))
        assert len(expected) == 20 * (1 + 19 * 5)
    else:
        expected = _ood_caches(["clip-b32", "clip-b16"], ["zs", "lp", "flcp", "ft"],
                               ["gaussian_noise", "zoom_blur", "frost", "contrast", "jpeg_compression", "speckle_noise"])
    assert set(planned_outputs(dry_run_output, "infer_ood")) == expected
    assert len(planned_outputs(dry_run_output, "score_ood")) == len(expected)
    figures = {inputs[0].split("/")[2]: inputs for inputs in planned_inputs(dry_run_output, "ood_figure")}
    assert set(figures) == ({"clip-b32", "clip-b16", "blip", "albef"} if full else {"clip-b32", "clip-b16"})
    b32 = figures["clip-b32"]
    assert "results/scores/clip-b32/imagenet-c/zs/none-s0.zarr" in b32
    assert not any(path.startswith("results/scores/clip-b32/imagenet/") for path in b32)  # not the main table's
    masks = set(planned_outputs(dry_run_output, "masks"))
    assert {"results/masks/imagenet-c/val-r224c224.zarr", "results/masks/imagenet/val-r224c224.zarr"} <= masks


def ood_targets(config: dict) -> list[str]:
    from rationality.config import ood_runs, validate_config

    return [f"results/scores/{model}/{ood}/{method}/{corruption}-s{severity}.zarr"
            for model, ood, method, corruption, severity in ood_runs(validate_config(config))]
