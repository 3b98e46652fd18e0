"""The README's demo block is written from the demo's tables and logs (a small fixture with known numbers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rationality.report.readme_demo import BEGIN, END, main

REPO = Path(__file__).resolve().parents[1]
KEY = {"dataset": "demo", "corruption": "none", "severity": 0}


def write_results(root: Path) -> Path:
    """tables/pt_ir.csv, tables/bootstrap.csv and model job logs of a two-method demo of two models (plus rows
    not shown); the second model's numbers are those of the first halved, its logs name 2 threads."""
    (root / "tables").mkdir(parents=True)
    table, intervals = [], []
    for model, scale in (("tiny-vit", 1.0), ("tiny-siglip", 0.5)):
        for method, kind, accuracy, pt, ir, quadrants, low, high in (
                ("zs", "zero_shot", 0.625, 0.62, 0.756098, (62, 38, 20, 40), 0.52, 0.71),
                ("ft", "finetune", 0.60625, 0.43299, 0.626866, (42, 55, 25, 38), 0.33, 0.5099)):
            accuracy, pt, ir, low, high = (value * scale for value in (accuracy, pt, ir, low, high))
            add_rows(table, intervals, {**KEY, "model": model, "method": method, "method_kind": kind,
                                        "accuracy": accuracy, "ir": ir}, pt, quadrants, low, high)
    pd.DataFrame(table).to_csv(root / "tables" / "pt_ir.csv", index=False)
    pd.DataFrame(intervals).to_csv(root / "tables" / "bootstrap.csv", index=False)
    for log, threads in (("pretrain/tiny-vit.log", 1), ("train/tiny-vit/demo/ft.log", 1),
                         ("infer/tiny-vit/demo/zs.log", 1), ("pretrain/tiny-siglip.log", 2),
                         ("infer/tiny-siglip/demo/zs.log", 2)):
        (root / "logs" / log).parent.mkdir(parents=True, exist_ok=True)
        stage, unit = log.split("/")[0], "thread" if threads == 1 else "threads"
        (root / "logs" / log).write_text(
            f"rationality {stage}: torch 2.14.1, {threads} {unit}, CPU AMD EPYC (AVX2 kernels)\nwrote it\n")
    return root


def add_rows(table: list[dict], intervals: list[dict], key: dict, pt: float, quadrants: tuple[int, ...],
             low: float, high: float) -> None:
    """A run's rows of pt_ir.csv and bootstrap.csv: the shown explainer and policy, and two others (PT 0)."""
    for explainer, policy in (("generic_attention", "all_blocks"), ("generic_attention", "paper"),
                              ("attention_gradient", "all_blocks")):
        shown = (explainer, policy) == ("generic_attention", "all_blocks")
        row = {**key, "explainer": explainer, "start_layer_policy": policy, "pt": pt if shown else 0.0,
               "n": 160, "threshold": 0.5}
        table.append({**row, **dict(zip(("rr", "rw", "wr", "ww"), quadrants))})
        intervals.append({**row, "pt_low": low if shown else 0.0, "pt_high": high if shown else 0.0,
                          "confidence": 0.95, "resamples": 1000})


EXPECTED = """\
What the demo reports for tiny-vit (generic attention attribution, all blocks; 160 test images; threshold 0.5; \
95% bootstrap intervals of 1,000 resamples; made with torch 2.14.1, 1 thread, CPU AMD EPYC (AVX2 kernels); \
`results/tables/pt_ir.csv` has the rows of tiny-siglip next to these):

| method | accuracy | PT | PT 95% interval | IR | RR | RW | WR | WW |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| zero-shot | 0.625 | 0.620 | 0.520-0.710 | 0.756 | 62 | 38 | 20 | 40 |
| fine-tuning | 0.606 | 0.433 | 0.330-0.510 | 0.627 | 42 | 55 | 25 | 38 |

Fine-tuning lowers PT: the intervals do not overlap (zero-shot 0.620, 0.520-0.710; fine-tuning 0.433, 0.330-0.510)."""


def test_the_block_between_the_markers_is_rewritten(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{BEGIN}\nstale table\n{END}\nafter\n")
    assert main([str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == f"# title\n\nbefore\n{BEGIN}\n{EXPECTED}\n{END}\nafter\n"
    assert main([str(results), "--readme", str(readme)]) == 0  # idempotent
    assert readme.read_text() == f"# title\n\nbefore\n{BEGIN}\n{EXPECTED}\n{END}\nafter\n"


def test_overlapping_intervals_are_said_to_overlap(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "results")
    intervals = pd.read_csv(results / "tables" / "bootstrap.csv")
    intervals.loc[intervals.method == "ft", "pt_high"] = 0.6
    intervals.to_csv(results / "tables" / "bootstrap.csv", index=False)
    assert main([str(results), "--print"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "Fine-tuning does not change PT beyond its uncertainty: the intervals overlap (zero-shot 0.620, 0.520-0.710; "
        "fine-tuning 0.433, 0.330-0.600).")


def test_another_model_shows_its_own_rows_and_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "results")
    assert main([str(results), "--model", "tiny-siglip", "--print"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == ("What the demo reports for tiny-siglip (generic attention attribution, all blocks; 160 test "
                        "images; threshold 0.5; 95% bootstrap intervals of 1,000 resamples; made with torch 2.14.1, "
                        "2 threads, CPU AMD EPYC (AVX2 kernels); `results/tables/pt_ir.csv` has the rows of tiny-vit "
                        "next to these):")
    assert lines[4] == "| zero-shot | 0.312 | 0.310 | 0.260-0.355 | 0.378 | 62 | 38 | 20 | 40 |"


def test_an_unknown_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "results")
    assert main([str(results), "--model", "tiny-eva", "--print"]) == 2
    assert (f"{results / 'tables' / 'pt_ir.csv'}: no rows for model tiny-eva, explainer generic_attention and "
            "start-layer policy all_blocks (models in the table: ['tiny-siglip', 'tiny-vit'])") in capsys.readouterr().err


@pytest.mark.parametrize("text", ["no markers\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n"])
def test_a_readme_without_one_block_is_refused(text: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main([str(results), "--readme", str(readme)]) == 2
    assert f"readme_demo: error: {readme}: needs one line" in capsys.readouterr().err
    assert readme.read_text() == text


def test_missing_tables_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path), "--print"]) == 2
    assert f"{tmp_path / 'tables' / 'pt_ir.csv'}: no such table" in capsys.readouterr().err


def test_the_repository_readme_has_one_demo_block() -> None:
    text = (REPO / "README.md").read_text().split("\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)


def test_only_the_rma_rows_are_shown_when_the_tables_hold_several_metrics(tmp_path: Path) -> None:
    """Tables with a metric column (one row per localisation metric) give the same block: RMA's rows."""
    results = write_results(tmp_path / "results")
    for name in ("pt_ir.csv", "bootstrap.csv"):
        path = results / "tables" / name
        table = pd.read_csv(path)
        other = table.assign(metric="pointing_game", pt=0.99, pt_low=0.98, pt_high=1.0)
        pd.concat([table.assign(metric="rma"), other]).to_csv(path, index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    assert main([str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == f"{BEGIN}\n{EXPECTED}\n{END}\n"


def test_job_times_are_summed_per_rule_from_the_benchmark_files(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results")
    for path, seconds in (("train/tiny-vit/demo/ft.tsv", 100.4), ("train/tiny-vit/demo/lp.tsv", 20.2),
                          ("infer/tiny-vit/demo/ft.tsv", 7.0)):
        (results / "benchmarks" / path).parent.mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / path).write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{int(seconds)}\t12.5\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    assert main([str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == (
        f"{BEGIN}\n{EXPECTED}\n\nJob time of the run these numbers come from (2 rules, 128 s summed over jobs; "
        f"Snakemake's benchmark files): train 2 jobs, 121 s; infer 1 job, 7 s.\n{END}\n")
