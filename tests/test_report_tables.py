"""Paper-layout tables (best / second-best marks, CSV, Markdown, LaTeX), edge-case counts, per-sample outcomes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_stores import random_scores

from rationality import schema
from rationality.cli import main
from rationality.report.layout import AVERAGE, BEST, SECOND, mark_best, paper_tables, to_frame, to_latex, to_markdown
from rationality.report.tables import TABLE_COLUMNS, rationality_table
from rationality.store import write_dataset

METHODS, DATASETS = ["zs", "lp", "ft"], ["cub", "dogs"]
# Hand-made accuracies [method, dataset]: cub: lp best, zs second, ft last; dogs: zs and ft tie for best
# at three decimals (0.7001 and 0.7004), lp second; average: zs (0.60005) best, lp (0.575) second.
ACCURACY = {("zs", "cub"): 0.5, ("lp", "cub"): 0.7, ("ft", "cub"): 0.3,
            ("zs", "dogs"): 0.7001, ("lp", "dogs"): 0.45, ("ft", "dogs"): 0.7004}


def _long_table() -> pd.DataFrame:
    """A long table like rationality_table's: two policies, one explainer, and one out-of-distribution row."""
    rows = []
    for (method, dataset), accuracy in ACCURACY.items():
        for policy in ("paper", "all_blocks"):
            rows.append({"model": "clip", "dataset": dataset, "method": method, "method_kind": "x",
                         "corruption": "none", "severity": 0, "explainer": "generic_attention",
                         "start_layer_policy": policy, "start_layer": 0, "accuracy": accuracy,
                         "pt": accuracy / 2 if policy == "paper" else 1 - accuracy, "ir": np.nan if method == "ft" else 0.9})
    rows.append({**rows[0], "dataset": "cub-c", "corruption": "fog", "severity": 3, "accuracy": 0.99})
    return pd.DataFrame(rows)


def test_marks_best_and_second_per_column() -> None:
    tables = paper_tables(_long_table())
    accuracy = tables[0]
    assert (accuracy.model, accuracy.metric, accuracy.explainer, accuracy.policy) == ("clip", "accuracy", None, None)
    assert list(accuracy.values.index) == METHODS and list(accuracy.values.columns) == [*DATASETS, AVERAGE]
    assert accuracy.marks.to_dict() == {
        "cub": {"zs": SECOND, "lp": BEST, "ft": ""},
        "dogs": {"zs": BEST, "lp": SECOND, "ft": BEST},  # a tie at the displayed precision shares the mark
        AVERAGE: {"zs": BEST, "lp": SECOND, "ft": ""},
    }
    assert accuracy.values.loc["zs", AVERAGE] == pytest.approx((0.5 + 0.7001) / 2)


def test_out_of_distribution_rows_stay_out_and_nan_is_never_marked() -> None:
    tables = paper_tables(_long_table())
    assert "cub-c" not in tables[0].values.columns
    ir = next(t for t in tables if t.metric == "ir" and t.policy == "paper")
    assert math.isnan(ir.values.loc["ft", "cub"]) and math.isnan(ir.values.loc["ft", AVERAGE])
    assert ir.marks.loc["ft"].tolist() == ["", "", ""]
    assert ir.marks.loc["zs"].tolist() == [BEST] * 3  # zs and lp tie at 0.9 everywhere


def test_one_accuracy_table_and_pt_ir_per_explainer_and_policy() -> None:
    tables = paper_tables(_long_table())
    assert [(t.metric, t.policy) for t in tables] == [
        ("accuracy", None), ("pt", "paper"), ("ir", "paper"), ("pt", "all_blocks"), ("ir", "all_blocks")]
    pt_all = tables[3]
    assert pt_all.title == "clip: PT (generic_attention, start layer: all_blocks)"
    assert pt_all.values.loc["ft", "cub"] == pytest.approx(0.7)  # 1 - accuracy
    assert pt_all.marks.loc["ft", "cub"] == BEST


def test_duplicate_runs_are_refused() -> None:
    long = _long_table()
    with pytest.raises(ValueError, match="several rows"):
        paper_tables(pd.concat([long, long.iloc[:1]]))


def test_markdown_rows_columns_and_marks() -> None:
    markdown = to_markdown(paper_tables(_long_table()))
    section = markdown.split("### clip: accuracy\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0] == "| method | cub | dogs | avg |"
    assert section[1] == "| --- | ---: | ---: | ---: |"
    assert section[2:] == ["| zs | <ins>0.500</ins> | **0.700** | **0.600** |",
                           "| lp | **0.700** | <ins>0.450</ins> | <ins>0.575</ins> |",
                           "| ft | 0.300 | **0.700** | 0.500 |"]
    assert markdown.count("### ") == 5
    assert "| ft | n/a | n/a | n/a |" in markdown


def test_latex_rows_columns_and_marks() -> None:
    latex = to_latex(paper_tables(_long_table()))
    assert latex.count(r"\begin{table}") == 5 and latex.count(r"\end{tabular}") == 5
    first = latex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    assert [line.strip() for line in first] == [
        r"zs & \underline{0.500} & \textbf{0.700} & \textbf{0.600} \\",
        r"lp & \textbf{0.700} & \underline{0.450} & \underline{0.575} \\",
        r"ft & 0.300 & \textbf{0.700} & 0.500 \\"]
    assert r"Method & cub & dogs & Avg. \\" in latex
    assert r"\begin{tabular}{lrrr}" in latex
    assert r"generic\_attention" in latex and r"\label{tab:clip-pt-generic_attention-paper}" not in latex
    assert r"\label{tab:clip-pt-generic-attention-paper}" in latex


def test_csv_frame_keeps_numbers_and_marks() -> None:
    frame = to_frame(paper_tables(_long_table()))
    assert list(frame.columns) == ["model", "metric", "explainer", "start_layer_policy", "method",
                                   "cub", "cub_mark", "dogs", "dogs_mark", AVERAGE, f"{AVERAGE}_mark"]
    accuracy = frame[frame.metric == "accuracy"].set_index("method")
    assert accuracy.loc["zs", "dogs"] == pytest.approx(0.7001)
    assert accuracy["cub_mark"].fillna("").to_dict() == {"zs": SECOND, "lp": BEST, "ft": ""}
    assert len(frame) == 5 * len(METHODS)


def test_mark_best_on_a_single_value_column() -> None:
    marks = mark_best(pd.DataFrame({"a": [np.nan, 0.2]}, index=["x", "y"]))
    assert marks["a"].tolist() == ["", BEST]


def _written(tmp_path: Path, name: str, **attrs) -> Path:
    return write_dataset(random_scores(n=30, seed=len(name), explainers=("generic_attention", "grad"), **attrs),
                         tmp_path / f"{name}.zarr")


def test_long_table_counts_every_edge_case(tmp_path: Path) -> None:
    path = _written(tmp_path, "store", undefined_share=0.5)
    scores = schema.open_store(str(path), schema.StoreKind.SCORES)
    table = rationality_table([path], policies=["all_blocks"])
    assert list(table.columns) == TABLE_COLUMNS
    for row in table.itertuples():
        edge = scores[schema.EDGE_CASE].sel(explainer=row.explainer, start_layer=0).values
        assert row.n_empty_mask == np.sum(edge == schema.EdgeCase.EMPTY_MASK)
        assert row.n_zero_sum_heatmap == np.sum(edge == schema.EdgeCase.ZERO_SUM_HEATMAP)
        assert row.n_non_finite_heatmap == np.sum(edge == schema.EdgeCase.NON_FINITE_HEATMAP)
        assert row.n_empty_mask + row.n_zero_sum_heatmap + row.n_non_finite_heatmap == row.n_undefined > 0
        assert (row.corruption, row.severity) == ("none", 0)


def test_table_cli_writes_every_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stores = [_written(tmp_path, name, method=name, dataset=dataset)
              for name, dataset in (("zs", "a"), ("lp", "a"), ("zs2", "b"))]
    out = {kind: tmp_path / "tables" / f"paper.{kind}" for kind in ("csv", "md", "tex")}
    status = main(["table", *map(str, stores), "--out", str(tmp_path / "tables" / "pt_ir.csv"), "--threshold", "0.4",
                   "--paper-csv", str(out["csv"]), "--markdown", str(out["md"]), "--latex", str(out["tex"])])
    assert status == 0
    assert all(path.is_file() for path in out.values())
    long = pd.read_csv(tmp_path / "tables" / "pt_ir.csv")
    layout = pd.read_csv(out["csv"])
    assert set(layout.metric) == {"accuracy", "pt", "ir"}
    pt = layout[(layout.metric == "pt") & (layout.explainer == "grad") & (layout.start_layer_policy == "last_block")]
    expected = long[(long.explainer == "grad") & (long.start_layer_policy == "last_block") & (long.dataset == "a")]
    assert pt.set_index("method")["a"].dropna().to_dict() == pytest.approx(expected.set_index("method").pt.to_dict())
    assert "### mock: accuracy" in out["md"].read_text()
    assert "wrote" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad values on the command line


@pytest.mark.parametrize("command", ["rescore", "table", "bootstrap", "figure start-layer", "figure ood"])
@pytest.mark.parametrize("threshold", ["nan", "inf", "-0.1", "1.5", "half"])
def test_every_threshold_option_refuses_values_outside_zero_one(
        command: str, threshold: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--threshold nan`` once gave PT 0.000 with exit status 0."""
    store = _written(tmp_path, "zs")
    out = [] if command == "rescore" else ["--out", str(tmp_path / ("out.png" if "figure" in command else "out.csv"))]
    with pytest.raises(SystemExit) as exited:
        main([*command.split(), str(store), "--threshold", threshold, *out])
    assert exited.value.code == 2
    assert f"argument --threshold: must be a finite number in [0, 1], got '{threshold}'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv")) + list(tmp_path.glob("*.png"))


def test_bootstrap_refuses_a_confidence_outside_zero_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bootstrap", str(_written(tmp_path, "zs")), "--confidence", "95", "--out", str(tmp_path / "b.csv")])
    assert "argument --confidence: must be a number in (0, 1), got '95'" in capsys.readouterr().err


def test_the_same_store_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Twice the same store once gave every row twice (and the paper layout refused nothing)."""
    store = _written(tmp_path, "zs")
    assert main(["rescore", str(store), str(tmp_path / "." / "zs.zarr")]) == 2
    assert f"{store}, {tmp_path / '.' / 'zs.zarr'}: given more than once" in capsys.readouterr().err
    copy = shutil.copytree(store, tmp_path / "copy" / "zs.zarr")
    assert main(["table", str(store), str(copy), "--out", str(tmp_path / "t.csv")]) == 2
    assert f"{store} and {copy} both hold run mock/mock/zs;" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()
