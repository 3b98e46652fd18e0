"""Accuracy, PT and IR over training seeds: mean ± sd over the seeds next to the pooled bootstrap interval.

A method trained with ``seeds: [0, 1, 2]`` has one scores store per seed on the same test samples
(joined by sample id). Per (model, dataset, method, metric, explainer, start-layer policy), at the
configured thresholds and normalisation:

* ``<s>_mean``, ``<s>_sd``: the mean and standard deviation (n - 1) of the per-seed statistic, the
  spread training randomness causes;
* ``<s>_pooled``, ``<s>_low``, ``<s>_high``: the statistic pooled over the seeds (their outcome counts
  add up) with its bootstrap interval, resampling samples with their outcomes in every seed (see
  :func:`~rationality.report.bootstrap.pooled_bootstrap`): the uncertainty that the choice of test
  samples adds.

A method the seed does not change (zero-shot) has one store: its sd is empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from rationality.report.bootstrap import (
    DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, STATISTICS, configured_cut_offs, pooled_bootstrap,
)
from rationality.report.layout import format_value, markdown_table
from rationality.report.paired import aligned_codes, run_groups, statistics_of
from rationality.report.tables import KEY_COLUMNS, METRIC_LABELS, START_LAYER_POLICIES, open_scores
from rationality.scoring.metrics import DEFAULT_THRESHOLD, UndefinedPolicy

#: The columns of :func:`seeds_table`.
SEEDS_COLUMNS = [*(key for key in KEY_COLUMNS if key not in ("seed", "corruption", "severity")), "normalization",
                 "threshold", "n_seeds", "seeds", "n",
                 *(f"{name}_{part}" for name in STATISTICS for part in ("mean", "sd", "pooled", "low", "high")),
                 "confidence", "resamples", "bootstrap_seed", "undefined_policy"]


def seeds_table(score_paths: Sequence[str | Path], threshold: float = DEFAULT_THRESHOLD,
                undefined: UndefinedPolicy = "invalid", policies: Sequence[str] = START_LAYER_POLICIES,
                thresholds: Mapping[str, float] | None = None, resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """One row per (model, dataset, method, metric, explainer, policy) of clean stores; columns :data:`SEEDS_COLUMNS`.

    Raises:
        StoreError: a store is missing or invalid, stores were scored with different options, or the
            seeds of a method hold different samples.
    """
    rows = []
    for (model, dataset), group in run_groups(open_scores(score_paths)).items():
        for method, runs in group.items():
            keys, codes = aligned_codes(runs, policies, undefined, configured_cut_offs(runs[0], threshold, thresholds),
                                        purpose="a mean over seeds")
            per_seed = np.stack([statistics_of(codes[:, r]) for r in range(codes.shape[1])])  # [R, C, 3]
            pooled, low, high = pooled_bootstrap(codes, None, resamples, seed, confidence)
            mean = per_seed.mean(axis=0)  # NaN when a seed's statistic is undefined
            sd = per_seed.std(axis=0, ddof=1) if len(runs) > 1 else np.full(mean.shape, np.nan)
            seeds = " ".join(str(run.attrs["seed"]) for run in runs if run.attrs["seed"] is not None)
            for k, key in enumerate(keys):
                values = {}
                for s, name in enumerate(STATISTICS):
                    values.update({f"{name}_mean": mean[k, s], f"{name}_sd": sd[k, s], f"{name}_pooled": pooled[k, s],
                                   f"{name}_low": low[k, s], f"{name}_high": high[k, s]})
                rows.append({**key, "n_seeds": len(runs), "seeds": seeds, "n": len(codes), **values,
                             "confidence": confidence, "resamples": resamples, "bootstrap_seed": seed,
                             "undefined_policy": undefined})
    return pd.DataFrame(rows, columns=SEEDS_COLUMNS)


def seeds_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """The primary metric's rows as Markdown: a table per (model, dataset), a row per (method, explainer,
    policy), each statistic as ``mean ± sd [low, high]`` (the pooled interval)."""
    parts = ["Each cell: mean ± sd over the seeds [pooled bootstrap interval]; one seed has no sd.\n"]
    if table.empty:
        return parts[0]
    primary = table[table["metric"] == table["metric"].iloc[0]]
    for (model, dataset), rows in primary.groupby(["model", "dataset"], sort=False):
        body = []
        for row in rows.itertuples():
            cells = [f"{format_value(getattr(row, f'{s}_mean'), digits)} ± {format_value(getattr(row, f'{s}_sd'), digits)}"
                     f" [{format_value(getattr(row, f'{s}_low'), digits)}, {format_value(getattr(row, f'{s}_high'), digits)}]"
                     for s in STATISTICS]
            body.append([row.method, str(row.n_seeds), row.explainer, row.start_layer_policy, *cells])
        header = ["method", "seeds", "explainer", "start layer", *(METRIC_LABELS[s] for s in STATISTICS)]
        parts.append(f"### {model} on {dataset} ({primary['metric'].iloc[0]} at {rows['threshold'].iloc[0]:g})\n\n"
                     f"{markdown_table(header, body, text_columns=4)}\n")
    return "\n".join(parts)


def write_seeds_table(score_paths: Sequence[str], out: str, markdown: str | None = None, **options) -> list[Path]:
    """Write :func:`seeds_table` (``options``: its keyword arguments) as CSV, and as Markdown if asked."""
    table = seeds_table(score_paths, **options)
    written = [Path(out)]
    written[0].parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6f")
    if markdown:
        Path(markdown).write_text(seeds_markdown(table))
        written.append(Path(markdown))
    return written
