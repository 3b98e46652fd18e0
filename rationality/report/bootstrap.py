"""Bootstrap confidence intervals of accuracy, PT and IR.

Samples are resampled with replacement (n of n, ``resamples`` times, a fixed seed) and each
statistic is recomputed per resample; the interval is the percentile interval, the
((1 - confidence) / 2, (1 + confidence) / 2) quantiles of the resampled statistics (NaN resamples,
e.g. PT of a resample without a correct prediction, are left out; an interval is NaN when all are).

Vectorised over resamples: a resample is a vector of per-sample multiplicities w [n] (how often
each sample was drawn), and every count the statistics need is a dot product of w with a one-hot
matrix of the samples' :class:`~rationality.scoring.metrics.Outcome` codes, so a block of resamples
is one matrix product [b, n] @ [n, 6K] for all K (explainer, start layer) columns of a store at once.
Resamples are drawn in blocks of about 4M indices, which bounds memory at any n.

Every store is resampled with the same seed: stores of one dataset (same n) share their resamples,
so intervals of methods on the same dataset come from paired resamples.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from rationality import schema
from rationality.progress import track
from rationality.report.made_with import scoring_normalization
from rationality.report.tables import (
    START_LAYER_POLICIES, metric_view, open_scores, policy_start_layer, row_key, store_metrics, with_seed_column,
)
from rationality.scoring.localisation import evidence_rule, threshold_for
from rationality.scoring.metrics import DEFAULT_THRESHOLD, Outcome, UndefinedPolicy, outcome_codes

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
#: The statistics, in the order of the last axis of :func:`statistics_from_counts`.
STATISTICS: tuple[str, ...] = ("accuracy", "pt", "ir")
_BLOCK_ELEMENTS = 1 << 22


def resample_indices(n: int, resamples: int, seed: int = DEFAULT_SEED,
                     block_elements: int = _BLOCK_ELEMENTS) -> Iterator[np.ndarray]:
    """The bootstrap resamples of n samples, in blocks.

    Yields:
        int64 [b, n] sample indices drawn with replacement, b <= max(1, block_elements // n);
        ``resamples`` rows in all, the same for the same (n, resamples, seed, block_elements).
    """
    rng = np.random.default_rng(seed)
    per_block = max(1, block_elements // max(n, 1))
    for start in range(0, resamples, per_block):
        yield rng.integers(0, n, size=(min(per_block, resamples - start), n))


def resample_counts(codes: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """How many samples of each outcome every resample holds.

    Args:
        codes: [n, K] :class:`Outcome` codes (K columns, e.g. explainer x start layer).
        indices: [b, n] resampled sample indices.

    Returns:
        int64 [b, K, len(Outcome)].
    """
    n, columns = codes.shape
    blocks = indices.shape[0]
    offsets = (np.arange(blocks, dtype=np.int64) * n)[:, None]
    weights = np.bincount((indices + offsets).ravel(), minlength=blocks * n).reshape(blocks, n)
    one_hot = (codes[:, :, None] == np.arange(len(Outcome))).reshape(n, columns * len(Outcome))
    counts = weights.astype(np.float64) @ one_hot.astype(np.float64)  # exact: integers below 2**53
    return np.rint(counts).astype(np.int64).reshape(blocks, columns, len(Outcome))


def statistics_from_counts(counts: np.ndarray) -> np.ndarray:
    """Accuracy, PT and IR from outcome counts [..., len(Outcome)]: float64 [..., 3], NaN for 0/0."""
    rr, rw, wr = counts[..., Outcome.RR], counts[..., Outcome.RW], counts[..., Outcome.WR]
    right = rr + rw + counts[..., Outcome.EXCLUDED_RIGHT]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([right / counts.sum(axis=-1), rr / (rr + rw), rr / (rr + wr)], axis=-1).astype(np.float64)


def bootstrap_distribution(codes: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED) -> np.ndarray:
    """Accuracy, PT and IR of every bootstrap resample.

    Args:
        codes: [n, K] (or [n]) :class:`Outcome` codes of K columns sharing their samples.

    Returns:
        float64 [resamples, K, 3] (or [resamples, 3]), statistics in :data:`STATISTICS` order.
    """
    codes = np.asarray(codes)
    flat = codes.reshape(len(codes), -1)
    if len(flat) == 0:
        return np.full((resamples, *codes.shape[1:], len(STATISTICS)), np.nan)
    blocks = [statistics_from_counts(resample_counts(flat, indices))
              for indices in resample_indices(len(flat), resamples, seed)]
    distribution = np.concatenate(blocks, axis=0)
    return distribution[:, 0] if codes.ndim == 1 else distribution


def percentile_interval(distribution: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over the first axis of ``distribution`` [B, ...]: (low [...], high [...])."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        low, high = np.nanquantile(distribution, [tail, 1 - tail], axis=0)
    return low, high


def outcome_columns(scores: xr.Dataset, policies: Sequence[str], undefined: UndefinedPolicy,
                    cut_offs: Mapping[str, Sequence[float]], normalizations: Sequence[str] | None = None
                    ) -> tuple[list[dict[str, object]], np.ndarray]:
    """Outcome codes of every (metric, normalisation, threshold, start-layer policy, explainer) column of a store.

    Args:
        cut_offs: the thresholds of each metric to apply (metrics not named are left out), e.g.
            ``{m: [threshold_for(m, ...)]}`` for the configured ones or a metric's claims grid.
        normalizations: heatmap normalisations (default: the store's).

    Returns:
        The columns' keys (:func:`~rationality.report.tables.row_key` plus ``normalization`` and
        ``threshold``), and codes [n, K] int8 in the same order.
    """
    keys, codes = [], []
    correct = scores[schema.CORRECT].values
    explainers = [str(e) for e in scores.coords[schema.EXPLAINER].values]
    for metric in (m for m in store_metrics(scores) if m in cut_offs):
        rule = evidence_rule(metric)
        for normalization in normalizations or [scoring_normalization(scores)]:
            view = metric_view(scores, metric, normalization)
            values, edge = view[schema.SCORE].values, view[schema.EDGE_CASE].values
            for cut in cut_offs[metric]:
                for policy in policies:
                    layer = policy_start_layer(policy, scores)
                    for e, explainer in enumerate(explainers):
                        keys.append({**row_key(scores, explainer, policy, metric), "normalization": normalization,
                                     "threshold": cut})
                        codes.append(outcome_codes(values[:, e, layer], edge[:, e, layer], correct, cut, undefined,
                                                   **rule))
    return keys, np.stack(codes, axis=1)


def configured_cut_offs(scores: xr.Dataset, threshold: float, thresholds: Mapping[str, float] | None
                        ) -> dict[str, list[float]]:
    """Each metric of a store at its configured threshold (see :func:`~rationality.scoring.localisation.threshold_for`)."""
    return {metric: [threshold_for(metric, threshold, thresholds)] for metric in store_metrics(scores)}


def pooled_bootstrap(runs: np.ndarray, reference: np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, PT and IR pooled over repeated runs, or their paired difference from a reference.

    The runs' outcomes on each sample are pooled (their counts add up: PT of three seeds is RR / (RR
    + RW) over all three), and resampling draws samples, each with its outcomes in every run and in
    the reference: a paired, clustered bootstrap. Columns are processed in groups that bound memory.

    Args:
        runs: [n, R, C] :class:`Outcome` codes of R runs (e.g. seeds) on the same n samples.
        reference: [n, C] codes of the reference run (e.g. zero-shot) on those samples, or None.

    Returns:
        (point, low, high), each [C, 3] in :data:`STATISTICS` order: the pooled statistic, or pooled
        minus reference; ``low``/``high`` its percentile interval.
    """
    runs = np.asarray(runs)
    n, n_runs, n_columns = runs.shape
    parts = [runs] if reference is None else [runs, np.asarray(reference)[:, None]]
    joined = np.concatenate(parts, axis=1)  # [n, R (+1), C]
    width = max(1, (1 << 25) // max(n * joined.shape[1] * len(Outcome), 1))  # one-hot of at most 256 MB
    point, low, high = (np.empty((n_columns, len(STATISTICS))) for _ in range(3))
    for start in range(0, n_columns, width):
        block = joined[:, :, start:start + width]
        counts = (block[..., None] == np.arange(len(Outcome))).sum(axis=0)  # [R (+1), c, 6]
        statistics = statistics_from_counts(counts[:n_runs].sum(axis=0))
        samples = [resample_counts(block.reshape(n, -1), indices).reshape(len(indices), *block.shape[1:], -1)
                   for indices in resample_indices(n, resamples, seed)] if n else []
        distribution = (np.concatenate(samples) if samples else np.full((resamples, *block.shape[1:], len(Outcome)), 0))
        drawn = statistics_from_counts(distribution[:, :n_runs].sum(axis=1))
        if reference is not None:
            statistics = statistics - statistics_from_counts(counts[n_runs])
            drawn = drawn - statistics_from_counts(distribution[:, n_runs])
        point[start:start + width] = statistics
        low[start:start + width], high[start:start + width] = percentile_interval(drawn, confidence)
    return point, low, high


def bootstrap_table(score_paths: Sequence[str | Path], threshold: float = DEFAULT_THRESHOLD,
                    undefined: UndefinedPolicy = "invalid", policies: Sequence[str] = START_LAYER_POLICIES,
                    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    confidence: float = DEFAULT_CONFIDENCE, progress: bool = True,
                    thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Point estimates and bootstrap intervals of accuracy, PT and IR for every scores store and metric.

    One row per (store, metric, explainer, start-layer policy), keyed like
    :func:`~rationality.report.tables.rationality_table`; columns ``<statistic>``, ``<statistic>_low``,
    ``<statistic>_high`` for each of :data:`STATISTICS`, then ``n``, ``confidence``, ``resamples``,
    ``bootstrap_seed`` (the resampling seed), ``undefined_policy``; ``threshold`` is each metric's.

    Raises:
        StoreError: a store is missing or invalid, or stores were scored with different options.
    """
    rows = []
    for scores in track(open_scores(score_paths), "bootstrap", "stores", enabled=progress):
        keys, codes = outcome_columns(scores, policies, undefined, configured_cut_offs(scores, threshold, thresholds))
        low, high = percentile_interval(bootstrap_distribution(codes, resamples, seed), confidence)
        point = statistics_from_counts(np.stack([np.bincount(column, minlength=len(Outcome)) for column in codes.T]))
        for k, key in enumerate(keys):
            intervals = {}
            for s, name in enumerate(STATISTICS):
                intervals.update({name: point[k, s], f"{name}_low": low[k, s], f"{name}_high": high[k, s]})
            rows.append({**key, **intervals, "n": len(codes), "confidence": confidence, "resamples": resamples,
                         "bootstrap_seed": seed, "undefined_policy": undefined})
    return with_seed_column(pd.DataFrame(rows))
