"""Bootstrap intervals: the vectorised resampling against a plain loop, analytic cases, and the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_stores import random_scores

from rationality import schema
from rationality.report.tables import metric_view
from rationality.cli import main
from rationality.report.bootstrap import (
    STATISTICS, bootstrap_distribution, bootstrap_table, percentile_interval, resample_indices,
)
from rationality.scoring.metrics import UNDEFINED_POLICIES, Outcome, outcome_codes, rationality_metrics
from rationality.store import write_dataset


def _codes(scores, threshold: float = 0.5, undefined: str = "invalid") -> np.ndarray:
    """[n, E*S] outcome codes of every (explainer, start layer) of a scores dataset."""
    view = metric_view(scores)
    rma, edge = view[schema.SCORE].values, view[schema.EDGE_CASE].values
    codes = outcome_codes(rma, edge, scores[schema.CORRECT].values, threshold, undefined)
    return codes.reshape(len(codes), -1)


@pytest.mark.parametrize("undefined", UNDEFINED_POLICIES)
def test_vectorised_resamples_equal_a_loop(undefined: str) -> None:
    scores = random_scores(n=37, seed=1, n_layers=2, explainers=("a", "b"), undefined_share=0.2)
    rma = metric_view(scores)[schema.SCORE].values.reshape(37, -1)
    edge = metric_view(scores)[schema.EDGE_CASE].values.reshape(37, -1)
    correct = scores[schema.CORRECT].values
    resamples = 50
    fast = bootstrap_distribution(_codes(scores, 0.5, undefined), resamples, seed=7)
    indices = np.concatenate(list(resample_indices(37, resamples, seed=7)))
    assert fast.shape == (resamples, 4, len(STATISTICS)) and indices.shape == (resamples, 37)
    for r, drawn in enumerate(indices):
        for k in range(4):
            m = rationality_metrics(rma[drawn, k], edge[drawn, k], correct[drawn], 0.5, undefined)
            np.testing.assert_allclose(fast[r, k], [m.accuracy, m.pt, m.ir], rtol=1e-12, equal_nan=True)


def test_resamples_do_not_depend_on_the_block_size() -> None:
    whole = np.concatenate(list(resample_indices(20, 30, seed=3, block_elements=20 * 30)))
    blocks = list(resample_indices(20, 30, seed=3, block_elements=20 * 7))
    assert [len(b) for b in blocks] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_accuracy_interval_matches_the_binomial() -> None:
    """400 samples, half correct: the bootstrap accuracy is Binomial(400, 0.5) / 400, 95% within ±1.96·0.025."""
    codes = np.where(np.arange(400) % 2 == 0, Outcome.RR, Outcome.WW)
    low, high = percentile_interval(bootstrap_distribution(codes, 4000, seed=0))
    assert low[0] == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert high[0] == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    # every correct sample has valid evidence and every valid one is correct: PT = IR = 1 in every resample
    assert (low[1], high[1], low[2], high[2]) == (1.0, 1.0, 1.0, 1.0)


def test_undefined_ratio_gives_nan_interval() -> None:
    codes = np.full(10, Outcome.WW)  # no correct prediction, no valid evidence: PT and IR are 0/0 everywhere
    low, high = percentile_interval(bootstrap_distribution(codes, 100))
    assert (low[0], high[0]) == (0.0, 0.0)
    assert np.isnan(low[1:]).all() and np.isnan(high[1:]).all()


def test_percentile_interval_of_a_known_distribution() -> None:
    low, high = percentile_interval(np.arange(1001, dtype=float)[:, None], confidence=0.9)
    np.testing.assert_allclose([low[0], high[0]], [50.0, 950.0])
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval(np.zeros((3, 1)), confidence=1.0)


def _interval_widths(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    codes = rng.choice(4, size=n, p=[0.4, 0.2, 0.15, 0.25])
    low, high = percentile_interval(bootstrap_distribution(codes, 1000))
    return high - low


def test_intervals_shrink_with_more_samples() -> None:
    small, large = _interval_widths(100), _interval_widths(1600)
    assert (large < small / 2).all()  # the width shrinks like 1/sqrt(n): a quarter, with sampling noise


def test_table_intervals_contain_the_point_estimates(tmp_path: Path) -> None:
    paths = [write_dataset(random_scores(n=80, seed=s, explainers=("generic_attention", "grad"), method=m),
                           tmp_path / f"{m}.zarr") for s, m in enumerate(("zs", "ft"))]
    table = bootstrap_table(paths, threshold=0.4, resamples=300, progress=False)
    assert len(table) == 2 * 2 * 3
    for name in STATISTICS:
        assert (table[f"{name}_low"] <= table[name]).all() and (table[name] <= table[f"{name}_high"]).all()
        assert (table[f"{name}_low"] < table[f"{name}_high"]).all()
    scores = schema.open_store(str(paths[1]), schema.StoreKind.SCORES)
    row = table[(table.method == "ft") & (table.explainer == "grad") & (table.start_layer_policy == "all_blocks")].iloc[0]
    column = {schema.EXPLAINER: "grad", schema.START_LAYER: 0}
    view = metric_view(scores).sel(column)
    m = rationality_metrics(view[schema.SCORE].values, view[schema.EDGE_CASE].values, scores[schema.CORRECT].values, 0.4)
    assert (row.accuracy, row.pt, row.ir, row.n, row.threshold, row.bootstrap_seed) == (m.accuracy, m.pt, m.ir, 80,
                                                                                          0.4, 0)


def test_same_seed_same_intervals_and_cli(tmp_path: Path) -> None:
    path = write_dataset(random_scores(n=50, seed=2), tmp_path / "s.zarr")
    out = tmp_path / "ci.csv"
    assert main(["bootstrap", str(path), "--resamples", "200", "--seed", "5", "--out", str(out)]) == 0
    again = bootstrap_table([path], resamples=200, seed=5, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"seed": "Int64"}), again, check_dtype=False, atol=1e-6)

