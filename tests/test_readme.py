"""The README's "Reproducing the paper" block: generated from the configs and measurements, never typed.

The README must hold exactly what ``python -m rationality.report.readme`` generates now; the numbers
it generates are checked by hand on a small config with fixture measurements.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rationality.errors import ConfigError
from rationality.report.readme import BEGIN, END, current_block, generate, main, read_throughput, stage_counts
from rationality.resolve import load_config_files

REPO = Path(__file__).resolve().parents[1]
MODEL = {"adapter": "open_clip", "name": "ViT-B-32-quickgelu", "input_size": 224, "patch_size": 32}


def test_readme_block_is_what_the_script_generates() -> None:
    assert current_block(REPO / "README.md") == generate(REPO), \
        "README.md's generated block is out of date: run python -m rationality.report.readme"


def test_readme_benchmark_figures_are_what_the_benchmark_report_generates() -> None:
    """The Performance section's GPU and CPU tables and gpu_stage.json come from benchmarks/results/."""
    result = subprocess.run([sys.executable, "benchmarks/report.py", "--check"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A repository-like root: one ViT-B/32 on ImageNet and CUB, ZS and LP, two ImageNet-C corruptions
    at one severity, an ablation that changes LP, and fixture measurements."""
    config = {
        "models": {"m": MODEL}, "methods": {"zs": {"kind": "zero_shot"}, "lp": {"kind": "linear_probe"}},
        "datasets": {"imagenet": {"reader": "imagenet", "root": "in", "test_split": "val"},
                     "cub": {"reader": "cub", "root": "cub"}},
        "runs": {"models": ["m"], "datasets": ["imagenet", "cub"], "methods": ["zs", "lp"]},
        "ood": {"in-c": {"dataset": "imagenet", "corruptions": ["fog", "contrast"], "severities": [3]}}}
    ablations = {"ablations": {"t": {"model": "m", "dataset": "imagenet", "methods": ["zs", "lp"],
                                     "setups": {"s": {"label": "S", "set": {"lp": {"lr": 0.5}}}}}}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "paper.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "config" / "paper-ablations.yaml").write_text(yaml.safe_dump(ablations))
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "storage.json").write_text(json.dumps({
        "source": "benchmarks/storage.py", "date": "2026-01-01", "samples": 2048, "bytes_per_sample": {
            "cache": {"g7-c1000-e2-l12": 1000.0, "g7-c200-e2-l12": 500.0}, "scores": {"e2-l12": 10.0},
            "masks": {"224x224": 20.0}, "projections": {"7x7": 30.0}}}))
    return tmp_path


def _gpu(root: Path, rates: dict) -> None:
    (root / "benchmarks" / "results" / "gpu_stage.json").write_text(json.dumps(
        {"device": "a test GPU", "date": "2026-01-02", "source": "benchmarks/gpu.sh", "images_per_second": rates}))


def test_jobs_and_images_per_stage(small: Path) -> None:
    """5 runs (4 of the grid, lp@s of the ablation): 3 on ImageNet's 50,000 validation images, 2 on CUB's
    5,794 test images; the out-of-distribution set adds 2 runs x (2 corruptions + its clean severity 0)
    on ImageNet only."""
    config = load_config_files([small / "config" / "paper.yaml", small / "config" / "paper-ablations.yaml"])
    counts = {stage.stage: (stage.jobs, sum(stage.images.values())) for stage in stage_counts(config)}
    assert counts == {"train": (5, 0), "infer": (5, 3 * 50_000 + 2 * 5_794), "score": (5, 0),
                      "infer_ood": (6, 6 * 50_000), "score_ood": (6, 0)}


def test_gpu_hours_and_storage_from_the_measurements(small: Path) -> None:
    block = generate(small)
    assert "| m | 161,588 | 300,000 | not measured | not measured |" in block
    assert "| train | 4 | 5 |  |" in block and "| infer_ood | 6 | 6 | 300,000 |" in block
    _gpu(small, {"m": 100.0})
    block = generate(small)
    assert "from the throughput measured on a test GPU (2026-01-02, `benchmarks/gpu.sh`: the explanation pass in fp32" in block
    assert "| m | 161,588 | 300,000 | 100.0 | 1.3 |" in block  # 461,588 images / 100 per s = 1.28 h
    assert "| all | 161,588 | 300,000 | | 1.3 |" in block
    # cache: 3 x 50,000 x 1,000 B + 2 x 5,794 x 500 B (clean); 6 x 50,000 x 1,000 B (out-of-distribution)
    assert "| cache (clean) | 5 | 161,588 | 500 B - 1.0 kB | 155.8 MB |" in block
    assert "| cache (out-of-distribution) | 6 | 300,000 | 1.0 kB | 300.0 MB |" in block
    assert "| scores (clean and out-of-distribution) | 11 | 461,588 | 10 B | 4.6 MB |" in block
    # masks and projections: ImageNet val, CUB test and the ImageNet-C set, each once at 224 px and 7x7
    assert "| masks | 3 | 105,794 | 20 B | 2.1 MB |" in block
    assert "| mask projections | 3 | 105,794 | 30 B | 3.2 MB |" in block
    assert "| m | imagenet | lp@s | t.s | linear_probe | adam | 0.5 |" in block
    _gpu(small, {"other": 5.0})
    assert "| m | 161,588 | 300,000 | not measured | not measured |" in generate(small)


@pytest.mark.parametrize("content", ['{"device": "x"}', "not json", json.dumps(
    {"device": "x", "date": "d", "source": "s", "images_per_second": {"m": -1}})])
def test_a_malformed_throughput_file_names_itself(tmp_path: Path, content: str) -> None:
    path = tmp_path / "gpu_stage.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="gpu_stage.json"):
        read_throughput(path)


def test_rewrite_and_check(small: Path, capsys: pytest.CaptureFixture) -> None:
    (small / "README.md").write_text(f"# x\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    assert main(["--root", str(small), "--check"]) == 1
    assert main(["--root", str(small)]) == 0
    text = (small / "README.md").read_text()
    assert text.startswith(f"# x\n\n{BEGIN}\nGenerated by") and text.endswith(f"{END}\n\nafter\n")
    assert main(["--root", str(small), "--check"]) == 0
    (small / "README.md").write_text("no markers\n")
    assert main(["--root", str(small)]) == 2
    assert "README.md: needs the lines" in capsys.readouterr().err


@pytest.mark.slow
def test_storage_benchmark_in_tiny_mode(small: Path) -> None:
    """The benchmark writes the keys the README reads, with plausible sizes (64 samples per store)."""
    out = small / "storage.json"
    shutil.copy(small / "config" / "paper.yaml", small / "one.yaml")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "storage.py"), "--config", str(small / "one.yaml"),
                    "--samples", "64", "--out", str(out)], check=True, capture_output=True, timeout=600)
    measured = json.loads(out.read_text())["bytes_per_sample"]
    assert set(measured["cache"]) == {"g7-c1000-e2-l12", "g7-c200-e2-l12"}
    assert set(measured["masks"]) == {"224x224"} and set(measured["projections"]) == {"7x7"}
    # heatmaps: 2 explainers x 12 start layers x 49 tokens x 4 B = 9,408 B raw (uniform random values in [0, 1)
    # compress to about half: their sign and exponent bits repeat); logits 4 B per class
    cache = measured["cache"]
    assert 0.3 * 9_408 < cache["g7-c200-e2-l12"] < cache["g7-c1000-e2-l12"] < 9_408 + 4 * 1000


def configfile_misuses(text: str) -> list[str]:
    """Lines where a word after ``--configfile`` is not a config file: Snakemake would read a target
    written there as one more config file."""
    bad = []
    for line in text.splitlines():
        command = line.strip().lstrip("#").split(" # ", 1)[0]  # YAML comment lines hold commands too
        words = command.replace("\\", " ").split() if "snakemake" in command else []
        if "--configfile" in words:
            for word in words[words.index("--configfile") + 1:]:
                if word.startswith("-"):
                    break
                if not word.rstrip("`).,;").endswith((".yaml", ".yml", ".json")):
                    bad.append(line.strip())
                    break
                if word.endswith("`"):  # the end of an inline command: the prose after it is no argument
                    break
    return bad


def test_no_target_follows_configfile_in_the_docs() -> None:
    docs = [REPO / "README.md", REPO / "config" / "README.md", *REPO.glob("config/*.yaml"),
            *REPO.glob("profiles/*/config.yaml"), REPO / "workflow" / "Snakefile"]
    assert {str(path.relative_to(REPO)): configfile_misuses(path.read_text()) for path in docs} == \
        {str(path.relative_to(REPO)): [] for path in docs}
    assert configfile_misuses("snakemake --cores 8 --configfile config/paper.yaml results/tables/pt_ir.csv") == [
        "snakemake --cores 8 --configfile config/paper.yaml results/tables/pt_ir.csv"]
    assert configfile_misuses("`snakemake --cores 8 x.csv --configfile my.yaml` runs exactly `my.yaml`") == []
