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
from rationality.report.tables import TABLE_COLUMNS, metric_view, rationality_table
from rationality.store import write_dataset

METHODS, MODELS, DATASETS = ["zs", "lp", "ft"], ["clip", "blip"], ["cub", "dogs"]
GRID = {"models": MODELS, "datasets": DATASETS, "methods": METHODS}
# Hand-made accuracies [method, model, dataset]. Averages over the 4 cells of each method: zs 0.600,
# lp 0.6004 (ties zs at three decimals), ft 0.55; so zs and lp share best, ft is second.
ACCURACY = {("zs", "clip", "cub"): 0.5, ("zs", "clip", "dogs"): 0.7, ("zs", "blip", "cub"): 0.4,
            ("zs", "blip", "dogs"): 0.8, ("lp", "clip", "cub"): 0.9, ("lp", "clip", "dogs"): 0.3,
            ("lp", "blip", "cub"): 0.6016, ("lp", "blip", "dogs"): 0.6, ("ft", "clip", "cub"): 0.55,
            ("ft", "clip", "dogs"): 0.55, ("ft", "blip", "cub"): 0.55, ("ft", "blip", "dogs"): 0.55}
TABLE4 = Path(__file__).with_name("data") / "paper_table4.csv"


def _long_table(accuracy: dict = ACCURACY) -> pd.DataFrame:
    """A long table like rationality_table's: two policies, one explainer, and one out-of-distribution row."""
    rows = []
    for (method, model, dataset), value in accuracy.items():
        for policy in ("paper", "all_blocks"):
            rows.append({"model": model, "dataset": dataset, "method": method, "method_kind": "x",
                         "corruption": "none", "severity": 0, "explainer": "generic_attention",
                         "start_layer_policy": policy, "start_layer": 0, "accuracy": value,
                         "pt": value / 2 if policy == "paper" else 1 - value,
                         "ir": np.nan if (method, model, dataset) == ("ft", "blip", "dogs") else 0.9})
    rows.append({**rows[0], "dataset": "cub-c", "corruption": "fog", "severity": 3, "accuracy": 0.99})
    return pd.DataFrame(rows)


def test_average_is_over_all_models_and_datasets_and_only_averages_are_marked() -> None:
    accuracy = paper_tables(_long_table(), [GRID])[0]
    assert (accuracy.grid, accuracy.metric, accuracy.explainer, accuracy.policy) == (0, "accuracy", None, None)
    assert list(accuracy.values.index) == [(m, model) for m in METHODS for model in MODELS]
    assert list(accuracy.values.columns) == [*DATASETS, AVERAGE]
    assert accuracy.values.loc[("zs", "clip"), AVERAGE] == accuracy.values.loc[("zs", "blip"), AVERAGE] == \
        pytest.approx((0.5 + 0.7 + 0.4 + 0.8) / 4)
    assert accuracy.values.loc[("lp", "blip"), AVERAGE] == pytest.approx(0.6004)
    assert accuracy.marks.to_dict() == {"zs": BEST, "lp": BEST, "ft": SECOND}  # a tie at 3 decimals shares it


def test_table4_averages_are_the_papers() -> None:
    """The paper's Avg. column of Table 4 (typed in tests/data) is the mean of each method's 8 cells:
    ZS accuracy 64.15 exactly; every other average within 0.01 (its 8 cells and the average are each
    rounded to two decimals). The marks are the paper's bold ones: TA, ZS, TA."""
    paper = pd.read_csv(TABLE4, comment="#")
    datasets = ["imagenet", "caltech101", "stanford_dogs", "cub"]
    cells = paper.melt(id_vars=["metric", "method", "model"], value_vars=datasets, var_name="dataset")
    long = cells.pivot_table(index=["method", "model", "dataset"], columns="metric", values="value").reset_index()
    long = long.assign(severity=0, explainer="generic_attention", start_layer_policy="paper")
    grid = {"models": ["CLIP-ViT-B/16", "CLIP-ViT-B/32"], "datasets": datasets, "methods": ["ZS", "CoOp", "TA"]}
    tables = {table.metric: table for table in paper_tables(long, [grid], digits=2)}
    assert round(tables["accuracy"].values.loc[("ZS", "CLIP-ViT-B/16"), AVERAGE], 2) == 64.15
    for row in paper.dropna(subset=["avg"]).itertuples():
        assert tables[row.metric].values.loc[(row.method, row.model), AVERAGE] == pytest.approx(row.avg, abs=0.01)
    assert {metric: table.marks[table.marks == BEST].index.tolist() for metric, table in tables.items()} == {
        "accuracy": ["TA"], "pt": ["ZS"], "ir": ["TA"]}


def test_out_of_distribution_rows_stay_out_and_nan_is_never_marked() -> None:
    tables = paper_tables(_long_table(), [GRID])
    assert "cub-c" not in tables[0].values.columns
    ir = next(t for t in tables if t.metric == "ir" and t.policy == "paper")
    assert math.isnan(ir.values.loc[("ft", "blip"), "dogs"]) and math.isnan(ir.values.loc[("ft", "clip"), AVERAGE])
    assert ir.marks.to_dict() == {"zs": BEST, "lp": BEST, "ft": ""}  # zs and lp tie at 0.9


def test_one_accuracy_table_and_pt_ir_per_explainer_policy_and_grid() -> None:
    grids = [GRID, {"models": ["clip"], "datasets": DATASETS, "methods": ["zs", "ft"]}]
    tables = paper_tables(_long_table(), grids)
    assert [(t.grid, t.metric, t.policy) for t in tables] == [
        (grid, metric, policy) for grid in (0, 1) for metric, policy in (
            ("accuracy", None), ("pt", "paper"), ("ir", "paper"), ("pt", "all_blocks"), ("ir", "all_blocks"))]
    pt_all = tables[8]
    assert pt_all.title == "runs grid 2 (zs, ft): PT (generic_attention, start layer: all_blocks)"
    assert list(pt_all.values.index) == [("zs", "clip"), ("ft", "clip")]
    assert pt_all.values.loc[("ft", "clip"), AVERAGE] == pytest.approx(0.45)  # 1 - accuracy over clip only
    assert paper_tables(_long_table())[0].title == "accuracy"  # one grid: no grid in the titles


def test_duplicate_runs_are_refused() -> None:
    long = _long_table()
    with pytest.raises(ValueError, match="several rows"):
        paper_tables(pd.concat([long, long.iloc[:1]]))


def test_markdown_rows_columns_and_marks() -> None:
    markdown = to_markdown(paper_tables(_long_table(), [GRID]))
    section = markdown.split("### accuracy\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0] == "| method | model | cub | dogs | avg |"
    assert section[1] == "| --- | --- | ---: | ---: | ---: |"
    assert section[2:] == ["| zs | clip | 0.500 | 0.700 | **0.600** |", "| zs | blip | 0.400 | 0.800 |  |",
                           "| lp | clip | 0.900 | 0.300 | **0.600** |", "| lp | blip | 0.602 | 0.600 |  |",
                           "| ft | clip | 0.550 | 0.550 | <ins>0.550</ins> |", "| ft | blip | 0.550 | 0.550 |  |"]
    assert markdown.count("### ") == 5
    assert "| ft | blip | 0.900 | n/a |  |" in markdown and "| ft | clip | 0.900 | 0.900 | n/a |" in markdown


def test_latex_rows_columns_and_marks() -> None:
    latex = to_latex(paper_tables(_long_table(), [GRID]))
    assert latex.count(r"\begin{table}") == 5 and latex.count(r"\end{tabular}") == 5
    first = latex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    assert [line.strip() for line in first] == [
        r"\multirow{2}{*}{{zs}} & clip & 0.500 & 0.700 & \multirow{2}{*}{\textbf{0.600}} \\",
        r"& blip & 0.400 & 0.800 &  \\",
        r"\multirow{2}{*}{{lp}} & clip & 0.900 & 0.300 & \multirow{2}{*}{\textbf{0.600}} \\",
        r"& blip & 0.602 & 0.600 &  \\",
        r"\multirow{2}{*}{{ft}} & clip & 0.550 & 0.550 & \multirow{2}{*}{\underline{0.550}} \\",
        r"& blip & 0.550 & 0.550 &  \\"]
    assert r"Method & Model & cub & dogs & Avg. \\" in latex
    assert r"\begin{tabular}{llrrr}" in latex
    assert r"generic\_attention" in latex and r"\label{tab:grid1-pt-generic-attention-paper}" in latex


def test_csv_frame_keeps_numbers_and_marks() -> None:
    frame = to_frame(paper_tables(_long_table(), [GRID]))
    assert list(frame.columns) == ["grid", "metric", "explainer", "start_layer_policy", "method", "model",
                                   "cub", "dogs", AVERAGE, f"{AVERAGE}_mark"]
    accuracy = frame[frame.metric == "accuracy"].set_index(["method", "model"])
    assert accuracy.loc[("lp", "blip"), "cub"] == pytest.approx(0.6016)
    assert accuracy.loc[("ft", "blip"), AVERAGE] == pytest.approx(0.55)
    assert accuracy["avg_mark"].fillna("").tolist() == [BEST, BEST, BEST, BEST, SECOND, SECOND]
    assert len(frame) == 5 * len(METHODS) * len(MODELS)


def test_mark_best_on_a_single_value_column() -> None:
    marks = mark_best(pd.Series([np.nan, 0.2, 0.1], index=["x", "y", "z"]), marks=(BEST,))
    assert marks.tolist() == ["", BEST, ""]


def _written(tmp_path: Path, name: str, **attrs) -> Path:
    return write_dataset(random_scores(n=30, seed=len(name), explainers=("generic_attention", "grad"), **attrs),
                         tmp_path / f"{name}.zarr")


def test_long_table_counts_every_edge_case(tmp_path: Path) -> None:
    path = _written(tmp_path, "store", undefined_share=0.5)
    scores = schema.open_store(str(path), schema.StoreKind.SCORES)
    table = rationality_table([path], policies=["all_blocks"])
    assert list(table.columns) == TABLE_COLUMNS
    for row in table.itertuples():
        edge = metric_view(scores)[schema.EDGE_CASE].sel(explainer=row.explainer, start_layer=0).values
        assert row.n_empty_mask == np.sum(edge == schema.EdgeCase.EMPTY_MASK)
        assert row.n_zero_sum_heatmap == np.sum(edge == schema.EdgeCase.ZERO_SUM_HEATMAP)
        assert row.n_non_finite_heatmap == np.sum(edge == schema.EdgeCase.NON_FINITE_HEATMAP)
        assert row.n_full_mask == np.sum(edge == schema.EdgeCase.FULL_MASK)
        assert row.n_empty_mask + row.n_zero_sum_heatmap + row.n_non_finite_heatmap + row.n_full_mask \
            == row.n_undefined > 0
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
    assert "### accuracy" in out["md"].read_text()
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
