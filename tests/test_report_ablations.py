"""Ablation tables in the layout of the paper's Table 3: which store fills which cell, best marks, formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_stores import scores_store

from rationality.cli import main
from rationality.config import validate_config
from rationality.errors import StoreError
from rationality.report.ablations import ablation_frame, layout_for, to_latex, to_markdown
from rationality.report.made_with import read_made_with
from rationality.report.tables import rationality_table
from rationality.store import write_dataset

EXPLAINERS = ("generic_attention", "attention_gradient")
#: Per run: correct samples (the first of 10) and, per explainer, samples with RMA 1 (the first; the rest 0).
#: With every correct sample first, PT = min(valid, correct) / correct and IR = min(valid, correct) / valid.
PLANTED = {"zs": (5, (6, 4)), "lp": (8, (5, 2)), "lp@lr": (7, (7, 7)), "ft": (9, (9, 3))}


def _store(tmp_path: Path, method: str) -> Path:
    correct_count, valid_counts = PLANTED[method]
    rma = np.zeros((10, 2, 2), np.float32)
    for e, valid in enumerate(valid_counts):
        rma[:valid, e, :] = 1.0
    store = scores_store(rma, np.zeros(rma.shape), np.arange(10) < correct_count, explainers=EXPLAINERS,
                         model="clip", dataset="imagenet", method=method, method_kind="linear_probe",
                         paper_start_layer=0)
    return write_dataset(store, tmp_path / f"{method}.zarr")


def _config() -> dict:
    model = {"adapter": "open_clip", "name": "x", "input_size": 64, "patch_size": 8}
    return validate_config({
        "models": {"clip": model}, "datasets": {"imagenet": {"reader": "imagenet", "root": "r"}},
        "methods": {"zs": {"kind": "zero_shot"}, "lp": {"kind": "linear_probe"}, "ft": {"kind": "finetune"}},
        "runs": {"models": ["clip"], "datasets": ["imagenet"], "methods": ["zs", "lp", "ft"]},
        "ablations": {"t3": {"model": "clip", "dataset": "imagenet", "methods": ["zs", "lp", "ft"], "setups": {
            "grad": {"label": "∇A explanation heatmap", "explainer": "attention_gradient"},
            "lr": {"label": "Different LRs", "set": {"lp": {"lr": 5e-4}}}}}}})


@pytest.fixture
def stores(tmp_path: Path) -> list[Path]:
    return [_store(tmp_path, method) for method in PLANTED]


def test_layout_names_each_cells_run_and_explainer() -> None:
    layout = layout_for(_config(), "t3")
    assert layout == {"name": "t3", "model": "clip", "dataset": "imagenet", "methods": ["zs", "lp", "ft"],
                      "policy": "paper", "setups": [
                          {"name": "grad", "label": "∇A explanation heatmap", "explainer": "attention_gradient",
                           "runs": {"zs": "zs", "lp": "lp", "ft": "ft"}},
                          {"name": "lr", "label": "Different LRs", "explainer": "generic_attention",
                           "runs": {"zs": "zs", "lp": "lp@lr", "ft": "ft"}}]}


def test_cells_hold_the_planted_values(stores: list[Path]) -> None:
    frame = ablation_frame(rationality_table(stores, policies=["paper"]), layout_for(_config(), "t3"))
    values = frame.set_index(["setup", "metric"])[["zs", "lp", "ft"]]
    # grad: attention_gradient valid counts zs 4, lp 2, ft 3; lr: generic_attention, lp is lp@lr.
    assert values.loc[("grad", "accuracy")].tolist() == pytest.approx([0.5, 0.8, 0.9])
    assert values.loc[("grad", "pt")].tolist() == pytest.approx([4 / 5, 2 / 8, 3 / 9])
    assert values.loc[("grad", "ir")].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert values.loc[("lr", "accuracy")].tolist() == pytest.approx([0.5, 0.7, 0.9])
    assert values.loc[("lr", "pt")].tolist() == pytest.approx([5 / 5, 7 / 7, 9 / 9])
    assert values.loc[("lr", "ir")].tolist() == pytest.approx([5 / 6, 7 / 7, 9 / 9])


def test_markdown_and_latex_bold_the_best_of_each_row(stores: list[Path]) -> None:
    layout = layout_for(_config(), "t3")
    frame = ablation_frame(rationality_table(stores, policies=["paper"]), layout)
    lines = to_markdown(frame, layout).splitlines()
    assert lines[0] == "### t3: clip on imagenet (start layer: paper)"
    table = lines[lines.index("| setup | evaluation | zs | lp | ft |"):]
    assert table[2:] == [
        "| ∇A explanation heatmap (attention_gradient) | accuracy | 0.500 | 0.800 | **0.900** |",
        "|  | PT | **0.800** | 0.250 | 0.333 |",
        "|  | IR | **1.000** | **1.000** | **1.000** |",
        "| Different LRs (generic_attention) | accuracy | 0.500 | 0.700 | **0.900** |",
        "|  | PT | **1.000** | **1.000** | **1.000** |",
        "|  | IR | 0.833 | **1.000** | **1.000** |"]
    latex = to_latex(frame, layout)
    assert r"\multirow{3}{*}{Different LRs} & accuracy & 0.500 & 0.700 & \textbf{0.900} \\" in latex
    assert r"\label{tab:ablation-t3}" in latex and latex.count(r"\begin{table}") == 1


def test_cli_writes_every_format_and_names_a_missing_store(stores: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import json

    layout = json.dumps(layout_for(_config(), "t3"))
    out = tmp_path / "tables" / "t3"
    assert main(["ablation-table", *map(str, stores), "--layout", layout, "--out", f"{out}.csv",
                 "--markdown", f"{out}.md", "--latex", f"{out}.tex"]) == 0
    written = pd.read_csv(f"{out}.csv")
    assert list(written.columns) == ["ablation", "setup", "label", "explainer", "start_layer_policy", "metric",
                                     "zs", "lp", "ft", "threshold", "undefined_policy", "normalization", "best"]
    assert read_made_with(f"{out}.csv") == {"threshold": "0.5", "undefined_policy": "invalid",
                                            "normalization": "minmax"}  # what the report's caption shows
    assert written["best"].tolist() == ["ft", "zs", "zs lp ft", "ft", "zs lp ft", "lp ft"]
    assert Path(f"{out}.md").read_text().startswith("### t3") and Path(f"{out}.tex").is_file()
    capsys.readouterr()
    assert main(["ablation-table", *map(str, stores[:2]), "--layout", layout, "--out", f"{out}.csv"]) == 2
    assert "setup grad: no scores of run (clip, imagenet, ft) with explainer attention_gradient" in \
        capsys.readouterr().err


def test_a_run_given_twice_is_refused(stores: list[Path]) -> None:
    long = rationality_table(stores, policies=["paper"])
    with pytest.raises(StoreError, match="several rows"):
        ablation_frame(pd.concat([long, long.iloc[:1]]), layout_for(_config(), "t3"))
