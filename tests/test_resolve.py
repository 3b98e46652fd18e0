"""``rationality config resolve``: the runs the workflow trains, with every hyper-parameter, equal to the paper's.

The reference is typed by hand from the paper into ``tests/data/paper_hyperparameters.csv`` (each row
cites its table or section), so a wrong number in ``config/paper.yaml`` fails here.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from rationality.cli import main
from rationality.errors import ConfigError
from rationality.resolve import COLUMNS, format_runs, format_value, load_config_files, resolved_runs

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
ABLATIONS = REPO / "config" / "paper-ablations.yaml"
REFERENCE = Path(__file__).with_name("data") / "paper_hyperparameters.csv"


def _reference() -> list[dict[str, str]]:
    lines = [line for line in REFERENCE.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def _same(expected: str, value: object) -> bool:
    """A typed reference cell against a resolved value: empty means absent, numbers compare as numbers."""
    if expected == "":
        return value is None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(expected) == pytest.approx(value, rel=1e-12)
    return expected == value


@pytest.fixture(scope="module")
def paper_runs() -> dict[tuple[str, str, str], dict]:
    rows = resolved_runs(load_config_files([PAPER]))
    return {(row["model"], row["dataset"], row["method"]): row for row in rows}


def test_paper_config_resolves_to_the_papers_settings(paper_runs: dict) -> None:
    reference = _reference()
    assert len(reference) == 4 * 4 * 4
    mismatches = []
    for expected in reference:
        key = (expected["model"], expected["dataset"], expected["method"])
        run = paper_runs[key]
        for column, cell in expected.items():
            if column in ("model", "dataset", "method", "source") or cell == "-":
                continue
            if not _same(cell, run.get(column)):
                mismatches.append(f"{key} {column}: paper {cell!r} ({expected['source']}), resolved {run.get(column)!r}")
    assert not mismatches, "\n".join(mismatches)
    main_grid = {key for key in paper_runs if key[2] in ("zs", "lp", "flcp", "ft")}
    assert main_grid == {(row["model"], row["dataset"], row["method"]) for row in reference}


def test_paper_batches_run_on_one_gpu_as_the_papers_per_gpu_batch(paper_runs: dict) -> None:
    """ImageNet's global 512 on one GPU: 4 accumulated micro-steps of 128, the paper's per-GPU batch;
    LP trains on embeddings, so its steps are never split."""
    for method in ("flcp", "ft"):
        run = paper_runs[("clip-b16", "imagenet", method)]
        assert (run["batch_size"], run["processes"], run["batch_per_step"], run["accumulation_steps"]) == (512, 1, 128, 4)
    assert paper_runs[("clip-b16", "imagenet", "lp")]["accumulation_steps"] == 1
    assert paper_runs[("albef", "cub", "ft")]["accumulation_steps"] == 1
    assert all(row["seed"] == 42 for row in paper_runs.values())
    assert paper_runs[("clip-b32", "cub", "zs")]["optimizer"] is None


def test_ablations_add_their_own_runs_only(paper_runs: dict) -> None:
    rows = resolved_runs(load_config_files([PAPER, ABLATIONS]))
    keys = [(row["model"], row["dataset"], row["method"]) for row in rows]
    assert keys[: len(paper_runs)] == list(paper_runs)  # paper.yaml's runs unchanged, in order
    extra = {key: row for key, row in zip(keys, rows) if key not in paper_runs}
    assert set(extra) == {("clip-b32", "imagenet", f"{m}@{s}") for m in ("lp", "flcp", "ft") for s in ("adamw", "lr")}
    for method, lr in (("lp", 5e-4), ("flcp", 3e-6), ("ft", 2e-5)):  # Table 3's learning rates
        base = paper_runs[("clip-b32", "imagenet", method)]
        changed = extra[("clip-b32", "imagenet", f"{method}@lr")]
        assert changed["lr"] == lr and changed["ablation"] == "table3.lr"
        assert {k: v for k, v in changed.items() if k not in ("method", "lr", "ablation")} == \
            {k: v for k, v in base.items() if k not in ("method", "lr", "ablation")}
        adamw = extra[("clip-b32", "imagenet", f"{method}@adamw")]
        assert (adamw["optimizer"], adamw["weight_decay"], adamw["lr"]) == ("adamw", 0.01, base["lr"])


def test_files_merge_as_snakemake_merges_configfiles(tmp_path: Path) -> None:
    """Later files win key by key in mappings, replace lists and scalars, and an empty mapping changes nothing."""
    paper = yaml.safe_load(PAPER.read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(paper))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "methods": {"lp": {"lr": 0.5}}, "ood": {}, "train": {"nproc_per_node": 2},
        "runs": [{"models": ["clip-b32"], "datasets": ["cub"], "methods": ["lp", "flcp"]}]}))
    config = load_config_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert config["ood"] == load_config_files([PAPER])["ood"]
    rows = resolved_runs(config)
    assert [(row["method"], row["lr"], row["epochs"], row["batch_per_step"]) for row in rows] == [
        ("lp", 0.5, 10, 32), ("flcp", 1e-5, 10, 32)]


def test_a_batch_that_cannot_be_split_names_the_run(tmp_path: Path) -> None:
    paper = yaml.safe_load(PAPER.read_text())
    paper["train"]["max_batch_per_step"] = 32
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(paper))
    with pytest.raises(ConfigError, match=r"run \(clip-b32, imagenet, flcp\): a loss over 128 images .*contrastive_batch_size"):
        resolved_runs(load_config_files([tmp_path / "small.yaml"]))
    with pytest.raises(ConfigError, match="missing.yaml: config file does not exist"):
        load_config_files([tmp_path / "missing.yaml"])


def test_formats(paper_runs: dict, capsys: pytest.CaptureFixture) -> None:
    rows = list(paper_runs.values())
    assert main(["config", "resolve", str(PAPER), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert main(["config", "resolve", str(PAPER), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(table[0])[: len(COLUMNS)] == COLUMNS and len(table) == len(rows)
    assert table[3]["lr"] == "1e-5" and table[3]["method"] == "ft" and table[3]["head_init"] == "random"
    assert main(["config", "resolve", str(PAPER)]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| model | dataset | method | kind | optimizer | lr |")  # no empty ablation column
    assert markdown[0].endswith("| seed | other |") and len(markdown) == 2 + len(rows)
    assert markdown == format_runs(rows).splitlines()
    assert 'prompt_template="a photo of a {}"' in markdown[2]


@pytest.mark.parametrize(("value", "text"), [(1e-5, "1e-5"), (5e-06, "5e-6"), (0.001, "0.001"), (1e-3, "0.001"),
                                             (0.07, "0.07"), (512, "512"), (None, ""), ("adam", "adam")])
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text
