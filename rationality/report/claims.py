"""Do the paper's conclusions survive other reasonable choices? A verdict per claim and condition.

The paper's claims, each a paired difference of a fine-tuned run from zero-shot on the same samples
(:mod:`rationality.report.paired`):

* C1: fine-tuning lowers Prediction Trustworthiness (ΔPT < 0);
* C2: it raises Inference Reliability (ΔIR > 0);
* C3: it raises accuracy (Δaccuracy > 0).

For every (model, dataset, method other than zero-shot) and, for C1 and C2, every condition: the
metric, its threshold grid (:attr:`~rationality.scoring.localisation.LocalisationMetric.thresholds`),
the heatmap normalisation (both are in every scores store), the explainer and the start-layer
policy, the table gives the effect pooled over the method's seeds, its paired bootstrap interval and
a verdict: **holds** when the interval lies wholly on the claimed side of 0, **reversed** when it lies
wholly on the other side, **inconclusive** when it covers 0 (or is undefined). Accuracy does not
depend on the condition: C3 has one row per run, its condition columns empty.

The figure shows at a glance where each claim holds: a panel per claim, a row per (model, dataset,
method), a column per metric; each cell is coloured by the share of its conditions where the claim
holds minus the share where it is reversed, and says how many of how many hold.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from rationality.progress import track
from rationality.report.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, STATISTICS, pooled_bootstrap
from rationality.report.figures import DPI, empty_figure, save_figure
from rationality.report.paired import paired_codes, read_table, run_groups, zero_shot_method
from rationality.report.tables import START_LAYER_POLICIES, open_scores, store_metrics
from rationality.scoring.localisation import metric_class
from rationality.scoring.metrics import UndefinedPolicy
from rationality.scoring.rma import NORMALIZATIONS

HOLDS, REVERSED, INCONCLUSIVE = "holds", "reversed", "inconclusive"
#: Columns that say under which condition a C1 or C2 row was measured (empty for C3).
CONDITION_COLUMNS = ["metric", "threshold", "normalization", "explainer", "start_layer_policy", "start_layer"]
CLAIMS_COLUMNS = ["claim", "statement", "model", "dataset", "method", "method_kind", "n_seeds", "reference",
                  *CONDITION_COLUMNS, "statistic", "effect", "effect_low", "effect_high", "verdict", "n", "confidence",
                  "resamples", "bootstrap_seed", "undefined_policy"]


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: the sign of a statistic's difference from zero-shot.

    Attributes:
        name: ``C1``, ``C2``, ...
        statistic: ``accuracy``, ``pt`` or ``ir``.
        sign: -1 if the claim is a decrease, +1 an increase.
        statement: the claim in words.
    """

    name: str
    statistic: str
    sign: int
    statement: str

    def verdict(self, low: float, high: float) -> str:
        """:data:`HOLDS`, :data:`REVERSED` or :data:`INCONCLUSIVE` for an interval [low, high] of the difference."""
        if np.isnan(low) or np.isnan(high):
            return INCONCLUSIVE
        if (high < 0) if self.sign < 0 else (low > 0):
            return HOLDS
        if (low > 0) if self.sign < 0 else (high < 0):
            return REVERSED
        return INCONCLUSIVE


CLAIMS = (
    Claim("C1", "pt", -1, "fine-tuning lowers PT against zero-shot"),
    Claim("C2", "ir", +1, "fine-tuning raises IR against zero-shot"),
    Claim("C3", "accuracy", +1, "fine-tuning raises accuracy against zero-shot"),
)


def claims_table(score_paths: Sequence[str | Path], undefined: UndefinedPolicy = "invalid",
                 policies: Sequence[str] = START_LAYER_POLICIES, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE, progress: bool = True) -> pd.DataFrame:
    """Every claim for every run against zero-shot and every condition; columns :data:`CLAIMS_COLUMNS`.

    Runs of a method with several seeds are pooled (one row per method); (model, dataset) groups
    without a zero-shot run give no rows.

    Raises:
        StoreError: a store is missing or invalid, stores were scored with different options, a group
            has several zero-shot stores, or a run holds other samples than its zero-shot run.
    """
    rows = []
    groups = run_groups(open_scores(score_paths))
    for where, group in track(groups.items(), "claims", "datasets", enabled=progress):
        reference_method = zero_shot_method(group, where)
        if reference_method is None:
            continue
        reference = group[reference_method][0]
        grids = {metric: metric_class(metric).thresholds for metric in store_metrics(reference)}
        for method, runs in group.items():
            if method == reference_method:
                continue
            keys, codes, reference_codes = paired_codes(runs, reference, policies, undefined, grids, NORMALIZATIONS)
            effect, low, high = pooled_bootstrap(codes, reference_codes, resamples, seed, confidence)
            common = {"model": where[0], "dataset": where[1], "method": method,
                      "method_kind": runs[0].attrs["method_kind"], "n_seeds": len(runs), "reference": reference_method,
                      "n": len(codes), "confidence": confidence, "resamples": resamples, "bootstrap_seed": seed,
                      "undefined_policy": undefined}
            for claim in CLAIMS:
                s = STATISTICS.index(claim.statistic)
                columns = [0] if claim.statistic == "accuracy" else range(len(keys))
                for k in columns:
                    condition = ({} if claim.statistic == "accuracy"
                                 else {name: keys[k][name] for name in CONDITION_COLUMNS})
                    rows.append({**common, "claim": claim.name, "statement": claim.statement, **condition,
                                 "statistic": claim.statistic, "effect": effect[k, s], "effect_low": low[k, s],
                                 "effect_high": high[k, s], "verdict": claim.verdict(low[k, s], high[k, s])})
    return pd.DataFrame(rows, columns=CLAIMS_COLUMNS).astype({"start_layer": "Int64", "n_seeds": "Int64"})


def verdict_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (claim, model, dataset, method, metric): how many conditions hold, are reversed, in all.

    Columns: ``claim``, ``run`` (``model / dataset / method``), ``metric`` (``accuracy`` for C3),
    ``holds``, ``reversed``, ``total``, ``score`` = (holds - reversed) / total.
    """
    frame = table.assign(run=table["model"] + " / " + table["dataset"] + " / " + table["method"],
                         metric=table["metric"].fillna("accuracy"))
    counts = frame.groupby(["claim", "run", "metric"], sort=False)["verdict"].agg(
        holds=lambda v: int((v == HOLDS).sum()), reversed=lambda v: int((v == REVERSED).sum()), total="size")
    counts = counts.reset_index()
    return counts.assign(score=(counts["holds"] - counts["reversed"]) / counts["total"])


def claims_figure(table: pd.DataFrame) -> Figure:
    """The claims at a glance (see the module docstring), from :func:`claims_table`'s rows."""
    if table.empty:
        return empty_figure("no claim to check: each (model, dataset) needs a zero-shot run and another run")
    summary = verdict_summary(table)
    claims = [claim for claim in CLAIMS if claim.name in set(summary["claim"])]
    runs = list(dict.fromkeys(summary["run"]))
    metrics = {claim.name: list(dict.fromkeys(summary.loc[summary["claim"] == claim.name, "metric"])) for claim in claims}
    widths = [max(len(metrics[claim.name]), 2) for claim in claims]
    figure = Figure(figsize=(2.6 + 0.9 * sum(widths) + 0.6 * len(claims), 2.4 + 0.42 * len(runs)), dpi=DPI,
                    layout="constrained")
    axes = figure.subplots(1, len(claims), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    palette = colormaps["RdYlGn"]
    image = None
    for ax, claim in zip(axes, claims):
        columns = metrics[claim.name]
        grid = np.full((len(runs), len(columns)), np.nan)
        chosen = summary[summary["claim"] == claim.name]
        for row in chosen.itertuples():
            y, x = runs.index(row.run), columns.index(row.metric)
            grid[y, x] = row.score
            text = f"{row.holds}/{row.total}" + (f"\n{row.reversed} rev." if row.reversed else "")
            ax.text(x, y, text, ha="center", va="center", fontsize="x-small")
        image = ax.imshow(grid, cmap=palette, vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), [c if claim.statistic == "accuracy" else metric_class(c).title
                                            for c in columns], rotation=35, ha="right", fontsize="small")
        ax.set_yticks(range(len(runs)), runs if ax is axes[0] else [""] * len(runs), fontsize="small")
        ax.set_title(textwrap.fill(f"{claim.name}: {claim.statement}", 26), fontsize="small")
    colorbar = figure.colorbar(image, ax=list(axes), shrink=0.8)
    colorbar.set_label("share holding − share reversed", fontsize="small")
    confidence = table["confidence"].iloc[0]
    figure.suptitle(f"Where the paper's claims hold: conditions (thresholds × normalisations × explainers × start "
                    f"layers)\nwhose {confidence:.0%} paired bootstrap interval lies on the claimed side of 0",
                    fontsize="medium")
    return figure


def write_claims_table(score_paths: Sequence[str], out: str, **options) -> pd.DataFrame:
    """Write :func:`claims_table` (``options``: its keyword arguments) as CSV; returns it."""
    table = claims_table(score_paths, **options)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6f")
    return table


def write_claims_figure(table_path: str, out: str) -> None:
    """Write :func:`claims_figure` of a claims table (a CSV of :func:`claims_table`) to ``out``."""
    save_figure(claims_figure(read_table(table_path)), out)
