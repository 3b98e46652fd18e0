"""Threshold sweep, start-layer sensitivity and OOD figures: plotted values come from the stores, sizes are fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_stores import random_scores, scores_store

from rationality import schema
from rationality.report.tables import metric_view
from rationality.cli import main
from rationality.report.figures import DPI, PANEL, save_figure
from rationality.report.made_with import read_made_with
from rationality.report.ood import ood_figure, ood_table
from rationality.report.sweeps import start_layer_figure, threshold_curves, threshold_figure
from rationality.scoring.metrics import UNDEFINED_POLICIES, rationality_metrics
from rationality.store import write_dataset

METHODS = (("zs", "zero_shot"), ("lp", "linear_probe"), ("ft", "finetune"))
EXPLAINERS = ("generic_attention", "attention_gradient")
CORRUPTIONS = ("fog", "gaussian_noise")


def _clean(n: int = 40) -> list:
    return [random_scores(n=n, seed=s, explainers=EXPLAINERS, method=m, method_kind=k, dataset="demo",
                          paper_start_layer=2 if k == "zero_shot" else 0)
            for s, (m, k) in enumerate(METHODS)]


def _ood(n: int = 40, severities: tuple[int, ...] = (1, 2, 3, 4, 5)) -> list:
    return [random_scores(n=n, seed=100 + 10 * c + s, explainers=EXPLAINERS, method=m, method_kind=k,
                          dataset="demo-c", corruption=corruption, severity=s,
                          paper_start_layer=2 if k == "zero_shot" else 0)
            for c, corruption in enumerate(CORRUPTIONS) for s in severities for m, k in METHODS]


def _metric(scores, explainer: str, layer: int, threshold: float = 0.5, undefined: str = "invalid"):
    column = {schema.EXPLAINER: explainer, schema.START_LAYER: layer}
    view = metric_view(scores).sel(column)
    return rationality_metrics(view[schema.SCORE].values, view[schema.EDGE_CASE].values,
                               scores[schema.CORRECT].values, threshold, undefined)


def _lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines()}


def _png_size(figure, path: Path) -> tuple[int, int]:
    save_figure(figure, path)
    with Image.open(path) as image:
        return image.size


# --------------------------------------------------------------------------- threshold sweep


@pytest.mark.parametrize("undefined", UNDEFINED_POLICIES)
def test_threshold_curves_equal_the_metrics_at_every_threshold(undefined: str) -> None:
    scores = random_scores(n=200, seed=4, undefined_share=0.2)
    view = metric_view(scores)
    rma, edge = view[schema.SCORE].values[:, 0, 0], view[schema.EDGE_CASE].values[:, 0, 0]
    correct = scores[schema.CORRECT].values
    thresholds = np.r_[np.linspace(0, 1, 51), rma[np.isfinite(rma)][:20], 0.7]  # incl. ties with samples
    pt, ir = threshold_curves(rma, edge, correct, thresholds, undefined)
    for t, p, i in zip(thresholds, pt, ir):
        m = rationality_metrics(rma, edge, correct, float(t), undefined)
        np.testing.assert_allclose([p, i], [m.pt, m.ir], rtol=1e-12, equal_nan=True)


def test_threshold_sweep_of_50000_samples_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    rma = rng.random(50_000).astype(np.float32)
    started = time.perf_counter()
    threshold_curves(rma, np.zeros(50_000, np.int8), rng.random(50_000) < 0.7, np.linspace(0, 1, 1001))
    assert time.perf_counter() - started < 0.5


def test_threshold_figure_plots_the_stores(tmp_path: Path) -> None:
    stores = _clean()
    figure = threshold_figure(stores, policy="paper")
    axes = np.asarray(figure.axes[:4]).reshape(2, 2)
    for row, explainer in zip(axes, EXPLAINERS):
        for ax, metric in zip(row, ("pt", "ir")):
            lines = _lines(ax)
            assert set(lines) == {"zs", "lp", "ft"} and ax.get_title() == explainer
            for scores in stores:
                x, y = lines[scores.attrs[schema.ATTR_METHOD]]
                layer = int(scores.attrs[schema.ATTR_PAPER_START_LAYER])
                for k in (0, 60, 100, 150, 200):
                    assert getattr(_metric(scores, explainer, layer, threshold=x[k]), metric) == pytest.approx(
                        y[k], nan_ok=True)
    assert _png_size(figure, tmp_path / "t.png") == (round(2 * PANEL[0] * DPI), round(2 * PANEL[1] * DPI))


def test_start_layer_figure_plots_the_stores(tmp_path: Path) -> None:
    stores = _clean()
    figure = start_layer_figure(stores, threshold=0.6)
    pt_ax = figure.axes[0]
    lines = _lines(pt_ax)
    for scores in stores:
        x, y = lines[scores.attrs[schema.ATTR_METHOD]]
        np.testing.assert_array_equal(x, [0, 1, 2])
        expected = [_metric(scores, EXPLAINERS[0], layer, threshold=0.6).pt for layer in range(3)]
        np.testing.assert_allclose(y, expected)
    stars = sorted(tuple(c.get_offsets()[0]) for c in pt_ax.collections)
    paper = sorted((float(s.attrs[schema.ATTR_PAPER_START_LAYER]),
                    _metric(s, EXPLAINERS[0], int(s.attrs[schema.ATTR_PAPER_START_LAYER]), 0.6).pt) for s in stores)
    np.testing.assert_allclose(stars, paper)
    assert _png_size(figure, tmp_path / "s.png") == (round(2 * PANEL[0] * DPI), round(2 * PANEL[1] * DPI))


# --------------------------------------------------------------------------- out of distribution


def test_ood_table_reads_severity_from_attributes_and_finds_the_clean_store() -> None:
    clean, ood = _clean(), _ood(severities=(2, 5))
    table = ood_table(clean + ood + [random_scores(seed=9, dataset="other", method="zs", n=41)])
    assert set(table.severity) == {0, 2, 5}
    assert set(table.clean_dataset) == {"demo"} and set(table.ood_set) == {"demo-c"}
    assert len(table) == len(CORRUPTIONS) * len(METHODS) * 3
    zs_clean = table[(table.method == "zs") & (table.severity == 0)]
    assert zs_clean.accuracy.tolist() == [clean[0][schema.CORRECT].values.mean()] * len(CORRUPTIONS)


def test_ood_severity_zero_is_the_sets_own_clean_store_when_there_is_one() -> None:
    """The workflow's none-s0 store (the clean images in the set's frame) wins over the main table's
    clean store with the same samples, and two sets on one clean dataset each find their own."""
    own = [random_scores(seed=50 + i, explainers=EXPLAINERS, method=m, method_kind=k, dataset="demo-c",
                         corruption="none", severity=0) for i, (m, k) in enumerate(METHODS)]
    other_set = [random_scores(seed=200 + i, explainers=EXPLAINERS, method=m, method_kind=k, dataset="demo-c2",
                               corruption="fog", severity=3) for i, (m, k) in enumerate(METHODS)]
    other_own = [random_scores(seed=70 + i, explainers=EXPLAINERS, method=m, method_kind=k, dataset="demo-c2",
                               corruption="none", severity=0) for i, (m, k) in enumerate(METHODS)]
    table = ood_table(_clean() + own + _ood(severities=(2,)) + other_set + other_own)
    zero = table[(table.method == "zs") & (table.severity == 0)].set_index("ood_set")
    assert set(zero.loc["demo-c", "clean_dataset"]) == {"demo-c"}
    assert set(zero.loc["demo-c", "accuracy"]) == {own[0][schema.CORRECT].values.mean()}
    assert zero.loc["demo-c2", "accuracy"] == other_own[0][schema.CORRECT].values.mean()


def test_ood_without_a_clean_store_has_no_severity_zero_value() -> None:
    table = ood_table(_ood(severities=(1,)))
    assert table[table.severity == 0].accuracy.isna().all()


def test_ood_figure_plots_means_over_corruptions(tmp_path: Path) -> None:
    clean, ood = _clean(), _ood()
    figure = ood_figure(clean + ood, explainer="attention_gradient", policy="all_blocks", threshold=0.4)
    axes = figure.axes[:3]
    for ax, metric in zip(axes, ("accuracy", "pt", "ir")):
        lines = _lines(ax)
        assert list(lines) == ["zs", "lp", "ft"]
        for m, (method, _) in enumerate(METHODS):
            x, y = lines[method]
            np.testing.assert_array_equal(x, range(6))
            expected = [getattr(_metric(clean[m], "attention_gradient", 0, 0.4), metric)]
            for severity in range(1, 6):
                stores = [s for s in ood if s.attrs["method"] == method and s.attrs["severity"] == severity]
                assert len(stores) == len(CORRUPTIONS)
                expected.append(np.mean([getattr(_metric(s, "attention_gradient", 0, 0.4), metric) for s in stores]))
            np.testing.assert_allclose(y, expected)
    assert "mean of 2 corruptions" in axes[0].get_title()
    assert _png_size(figure, tmp_path / "o.png") == (round(3 * PANEL[0] * DPI), round(PANEL[1] * DPI))


def test_ood_figure_per_corruption_has_a_row_each(tmp_path: Path) -> None:
    figure = ood_figure(_clean() + _ood(), per_corruption=True)
    assert len(figure.axes) == 3 * len(CORRUPTIONS)
    assert _png_size(figure, tmp_path / "o.png") == (round(3 * PANEL[0] * DPI), round(2 * PANEL[1] * DPI))


def test_ood_figure_without_ood_stores_says_so() -> None:
    figure = ood_figure(_clean())
    assert "no out-of-distribution" in figure.axes[0].texts[0].get_text()


def test_figure_cli_from_written_stores(tmp_path: Path) -> None:
    paths = [str(write_dataset(s, tmp_path / f"{s.attrs['dataset']}-{s.attrs['method']}-{s.attrs['corruption']}"
                                  f"-{s.attrs['severity']}.zarr"))
             for s in _clean(12) + [s for s in _ood(12, severities=(3,)) if s.attrs["method"] == "zs"]]
    clean = paths[:3]
    for kind, stores in (("threshold", clean), ("start-layer", clean), ("ood", paths)):
        out = tmp_path / f"{kind}.png"
        assert main(["figure", kind, *stores, "--out", str(out)]) == 0
        with Image.open(out) as image:
            assert image.size[0] >= 2 * PANEL[0] * DPI - 1


def test_figure_cli_refuses_mixed_scoring_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_dataset(random_scores(), tmp_path / "a.zarr")
    b = write_dataset(scores_store(np.zeros((3, 1, 1)), np.zeros((3, 1, 1)), [True, False, True],
                                   scoring={"normalization": "none"}), tmp_path / "b.zarr")
    assert main(["figure", "threshold", str(a), str(b), "--out", str(tmp_path / "x.png")]) == 2
    assert "different scoring options" in capsys.readouterr().err


def test_figures_and_tables_record_how_they_were_made(tmp_path: Path) -> None:
    """What the report's captions read: the options each output was made with, from the output itself."""
    clean = [str(write_dataset(s, tmp_path / f"{s.attrs['method']}.zarr")) for s in _clean(12)]
    shifted = [str(write_dataset(s, tmp_path / f"{s.attrs['method']}-fog.zarr"))
               for s in _ood(12, severities=(3,)) if s.attrs["corruption"] == "fog"]
    made = {}
    for name, args in {
        "threshold.png": ["figure", "threshold", *clean, "--policy", "all_blocks", "--undefined", "valid"],
        "start_layer.png": ["figure", "start-layer", *clean, "--threshold", "0.3"],
        "ood.png": ["figure", "ood", *clean, *shifted, "--threshold", "0.7", "--policy", "last_block"],
        "pt_ir.csv": ["table", *clean, "--threshold", "0.4", "--undefined", "exclude"],
        "bootstrap.csv": ["bootstrap", *clean, "--resamples", "20", "--seed", "3", "--threshold", "0.6"],
    }.items():
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        made[name] = read_made_with(tmp_path / name)
    assert made == {
        "threshold.png": {"start_layer_policy": "all_blocks", "undefined_policy": "valid", "normalization": "minmax"},
        "start_layer.png": {"threshold": "0.3", "undefined_policy": "invalid", "normalization": "minmax"},
        "ood.png": {"explainer": "generic_attention", "start_layer_policy": "last_block", "threshold": "0.7",
                    "undefined_policy": "invalid", "normalization": "minmax"},
        "pt_ir.csv": {"threshold": "0.4", "undefined_policy": "exclude", "normalization": "minmax"},
        "bootstrap.csv": {"threshold": "0.6", "undefined_policy": "invalid", "normalization": "minmax",
                          "resamples": "20", "bootstrap_seed": "3", "confidence": "0.95"},
    }
