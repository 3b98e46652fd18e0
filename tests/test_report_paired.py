"""Paired differences from zero-shot, means over seeds and the claims table: against plain loops and
constructed stores with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_stores import random_scores, scores_store

from rationality import schema
from rationality.cli import main
from rationality.errors import StoreError
from rationality.report.bootstrap import pooled_bootstrap, resample_indices
from rationality.report.claims import CLAIMS, HOLDS, INCONCLUSIVE, REVERSED, claims_table, verdict_summary
from rationality.report.paired import paired_table
from rationality.report.seeds import seeds_table
from rationality.report.tables import metric_view
from rationality.scoring.localisation import metric_class
from rationality.scoring.metrics import outcome_codes, rationality_metrics
from rationality.scoring.rma import NORMALIZATIONS
from rationality.store import write_dataset


def _codes(scores, threshold: float = 0.5) -> np.ndarray:
    """[n, E*S] outcome codes of every (explainer, start layer) of a scores dataset's primary metric."""
    view = metric_view(scores)
    codes = outcome_codes(view[schema.SCORE].values, view[schema.EDGE_CASE].values, scores[schema.CORRECT].values,
                          threshold, "invalid")
    return codes.reshape(len(codes), -1)


def _statistics(scores, drawn: np.ndarray, k: int, threshold: float = 0.5) -> np.ndarray:
    """Accuracy, PT, IR of column k (flattened explainer x start layer) of resampled samples ``drawn``."""
    view = metric_view(scores)
    rma = view[schema.SCORE].values.reshape(len(drawn), -1)[drawn, k]
    edge = view[schema.EDGE_CASE].values.reshape(len(drawn), -1)[drawn, k]
    m = rationality_metrics(rma, edge, scores[schema.CORRECT].values[drawn], threshold)
    return np.array([m.accuracy, m.pt, m.ir])


def test_paired_bootstrap_equals_a_loop() -> None:
    """Every resample draws the same samples for the run and the reference; the interval is the
    percentile interval of the loop's differences."""
    run, reference = (random_scores(n=45, seed=s, n_layers=2, accuracy=a) for s, a in ((1, 0.8), (2, 0.5)))
    resamples = 80
    point, low, high = pooled_bootstrap(_codes(run)[:, None], _codes(reference), resamples, seed=3)
    indices = np.concatenate(list(resample_indices(45, resamples, seed=3)))
    for k in range(2):
        exact = _statistics(run, np.arange(45), k) - _statistics(reference, np.arange(45), k)
        np.testing.assert_allclose(point[k], exact, rtol=1e-12)
        loop = np.stack([_statistics(run, drawn, k) - _statistics(reference, drawn, k) for drawn in indices])
        np.testing.assert_allclose(low[k], np.nanquantile(loop, 0.025, axis=0), rtol=1e-12)
        np.testing.assert_allclose(high[k], np.nanquantile(loop, 0.975, axis=0), rtol=1e-12)


def test_a_run_equal_to_its_reference_differs_by_exactly_zero() -> None:
    """Pairing cancels the sample-to-sample variation both runs share: the interval is [0, 0], although
    each run's own interval is wide."""
    codes = _codes(random_scores(n=60, seed=4))
    point, low, high = pooled_bootstrap(codes[:, None], codes, resamples=200)
    assert (point == 0).all() and (low == 0).all() and (high == 0).all()
    _, own_low, own_high = pooled_bootstrap(codes[:, None], None, resamples=200)
    assert (own_high[:, 0] - own_low[:, 0] > 0.1).all()


def test_pooled_seeds_add_their_counts() -> None:
    """The pooled statistic of R runs is that of their outcomes side by side (R x n samples)."""
    runs = [_codes(random_scores(n=30, seed=s)) for s in (5, 6, 7)]
    point, _, _ = pooled_bootstrap(np.stack(runs, axis=1), None, resamples=10)
    together, _, _ = pooled_bootstrap(np.concatenate(runs)[:, None], None, resamples=10)
    np.testing.assert_allclose(point, together, rtol=1e-12)


def _trained(scores, seed: int, method: str = "ft"):
    """``scores`` as a fine-tuned run trained with ``seed``."""
    return scores.assign_attrs({schema.ATTR_METHOD: method, schema.ATTR_METHOD_KIND: "fine_tune", "seed": seed})


def _write(tmp_path: Path, scores, name: str) -> Path:
    return write_dataset(scores, tmp_path / f"{name}.zarr")


def test_paired_table_joins_by_sample_id(tmp_path: Path) -> None:
    zero_shot = random_scores(n=40, seed=1, explainers=("a", "b"))
    tuned = _trained(random_scores(n=40, seed=2, explainers=("a", "b")), seed=0)
    shuffled = tuned.isel({schema.SAMPLE: np.random.default_rng(0).permutation(40)})
    tables = [paired_table([_write(tmp_path / name, zero_shot, "zs"), _write(tmp_path / name, run, "ft")],
                           resamples=100, progress=False) for name, run in (("in_order", tuned), ("shuffled", shuffled))]
    pd.testing.assert_frame_equal(*tables)
    table = tables[0]
    assert len(table) == 2 * 3 and set(table["method"]) == {"ft"} and set(table["reference"]) == {"zs"}
    row = table[(table.explainer == "b") & (table.start_layer_policy == "all_blocks")].iloc[0]
    everything = np.arange(40)
    expected = _statistics(tuned, everything, 3) - _statistics(zero_shot, everything, 3)  # b at layer 0
    np.testing.assert_allclose([row.delta_accuracy, row.delta_pt, row.delta_ir], expected, rtol=1e-6)
    assert row.seed == 0 and row.n == 40
    for name in ("accuracy", "pt", "ir"):
        assert (table[f"delta_{name}_low"] <= table[f"delta_{name}"]).all()
        assert (table[f"delta_{name}"] <= table[f"delta_{name}_high"]).all()


def test_paired_table_refuses_other_samples_and_two_references(tmp_path: Path) -> None:
    zero_shot = _write(tmp_path, random_scores(n=20, seed=1), "zs")
    other = random_scores(n=20, seed=2, method="ft", method_kind="fine_tune",
                          ids=[f"other-{i}" for i in range(20)])
    with pytest.raises(StoreError, match="different samples; a paired difference needs"):
        paired_table([zero_shot, _write(tmp_path, other, "ft")], resamples=10, progress=False)
    second = _write(tmp_path, random_scores(n=20, seed=3, method="zs2"), "zs2")
    with pytest.raises(StoreError, match="several zero-shot stores"):
        paired_table([zero_shot, second], resamples=10, progress=False)


def _constructed(method: str, kind: str, correct: int, valid_right: int, valid_wrong: int, n: int = 200, **attrs):
    """n samples: the first ``correct`` predicted right; ``valid_right`` of those and ``valid_wrong`` of
    the others with RMA 0.9 (valid at every threshold of RMA's grid), the rest 0.1."""
    rma = np.full((n, 1, 2), 0.1, np.float32)
    rma[:valid_right] = 0.9
    rma[correct:correct + valid_wrong] = 0.9
    return scores_store(rma, np.zeros(rma.shape), np.arange(n) < correct, method=method, method_kind=kind,
                        explainers=("generic_attention",), **attrs)


def test_claims_on_runs_with_known_answers(tmp_path: Path) -> None:
    """zs: accuracy 0.5, PT 80/100, IR 80/140. ft: accuracy 0.8, PT 80/160, IR 1: every claim holds under
    every condition. worse: accuracy 0.2, PT 1, IR 40/120: every claim is reversed."""
    paths = [_write(tmp_path, _constructed("zs", "zero_shot", 100, 80, 60), "zs"),
             _write(tmp_path, _constructed("ft", "fine_tune", 160, 80, 0, seed=0), "ft"),
             _write(tmp_path, _constructed("worse", "fine_tune", 40, 40, 80, seed=0), "worse")]
    table = claims_table(paths, resamples=300, progress=False)
    conditions = len(metric_class("rma").thresholds) * len(NORMALIZATIONS) * 1 * 3  # thresholds x norms x explainers x policies
    assert len(table) == 2 * (2 * conditions + 1)
    ft, worse = table[table.method == "ft"], table[table.method == "worse"]
    assert (ft.verdict == HOLDS).all() and (worse.verdict == REVERSED).all()
    expected = {"C1": 80 / 160 - 80 / 100, "C2": 1 - 80 / 140, "C3": 0.8 - 0.5}
    for claim, effect in expected.items():
        np.testing.assert_allclose(ft.loc[ft.claim == claim, "effect"], effect, rtol=1e-6)
    accuracy = ft[ft.claim == "C3"].iloc[0]
    assert pd.isna(accuracy.metric) and pd.isna(accuracy.threshold)
    assert set(ft.loc[ft.claim == "C1", "threshold"]) == set(metric_class("rma").thresholds)
    summary = verdict_summary(table)
    assert summary.loc[summary.run == "mock / mock / ft", "score"].eq(1).all()
    assert summary.loc[summary.run == "mock / mock / worse", "score"].eq(-1).all()


def test_claim_verdicts() -> None:
    lower, higher = CLAIMS[0], CLAIMS[1]
    assert [lower.verdict(*i) for i in ((-0.2, -0.1), (0.1, 0.2), (-0.1, 0.1), (np.nan, np.nan))] == [
        HOLDS, REVERSED, INCONCLUSIVE, INCONCLUSIVE]
    assert [higher.verdict(*i) for i in ((-0.2, -0.1), (0.1, 0.2), (0.0, 0.1))] == [REVERSED, HOLDS, INCONCLUSIVE]


def test_seeds_table_mean_sd_and_pooled(tmp_path: Path) -> None:
    seeds = [_trained(random_scores(n=50, seed=10 + s), seed=s) for s in range(3)]
    paths = [_write(tmp_path, random_scores(n=50, seed=1), "zs")]
    paths += [_write(tmp_path, store, f"ft-{s}") for s, store in enumerate(seeds)]
    table = seeds_table(paths, resamples=100)
    assert len(table) == 2 * 3
    row = table[(table.method == "ft") & (table.start_layer_policy == "all_blocks")].iloc[0]
    per_seed = np.stack([_statistics(store, np.arange(50), 0) for store in seeds])
    np.testing.assert_allclose([row.accuracy_mean, row.pt_mean, row.ir_mean], per_seed.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose([row.accuracy_sd, row.pt_sd, row.ir_sd], per_seed.std(axis=0, ddof=1), rtol=1e-5)
    assert (row.n_seeds, row.seeds, row.n) == (3, "0 1 2", 50)
    assert row.accuracy_low <= row.accuracy_pooled <= row.accuracy_high
    zero_shot = table[table.method == "zs"]
    assert (zero_shot.n_seeds == 1).all() and zero_shot.accuracy_sd.isna().all()


def test_cli_writes_the_tables_and_figures(tmp_path: Path) -> None:
    paths = [str(_write(tmp_path, _constructed("zs", "zero_shot", 100, 80, 60), "zs")),
             str(_write(tmp_path, _constructed("ft", "fine_tune", 160, 80, 0, seed=0), "ft"))]
    claims, paired = tmp_path / "claims.csv", tmp_path / "paired.csv"
    assert main(["claims", *paths, "--resamples", "50", "--out", str(claims)]) == 0
    assert main(["paired", *paths, "--resamples", "50", "--metric-thresholds", "{rma: 0.4}", "--out", str(paired)]) == 0
    assert set(pd.read_csv(paired)["threshold"]) == {0.4}
    for kind, table, extra in (("claims", claims, []), ("paired", paired, ["--model", "mock", "--dataset", "mock"])):
        figure = tmp_path / f"{kind}.png"
        assert main(["figure", kind, str(table), *extra, "--out", str(figure)]) == 0
        assert figure.read_bytes()[:4] == b"\x89PNG"


def test_claims_span_thresholds_above_one_where_the_metric_allows_them(tmp_path: Path) -> None:
    """Attribution localisation's grid reaches 3 (an object holding 3x its area share); RMA's stops at 1."""
    stores = [random_scores(n=30, seed=1, metrics=("rma", "attribution_localisation")),
              _trained(random_scores(n=30, seed=2, metrics=("rma", "attribution_localisation")), seed=0)]
    table = claims_table([_write(tmp_path, s, name) for s, name in zip(stores, ("zs", "ft"))], resamples=20,
                         progress=False)
    grid = set(table.loc[table.metric == "attribution_localisation", "threshold"])
    assert grid == set(metric_class("attribution_localisation").thresholds) and max(grid) == 3.0
    with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\], got 1.5"):
        outcome_codes(np.array([0.7]), np.array([0]), np.array([True]), 1.5)
