"""Paired differences from zero-shot: Δaccuracy, ΔPT and ΔIR of every method on the same test samples.

For each (model, dataset), the zero-shot run is the reference; every other run on it (each of its
seeds) is joined with it by sample id (never by position: the stores must hold the same ids) and
its statistics are compared on the same samples. The interval is a paired bootstrap: each resample
draws samples, each with its outcome under the method and under zero-shot, so the variation both
runs share (which samples are easy) cancels out of the difference (see
:func:`~rationality.report.bootstrap.pooled_bootstrap`).

The table (:func:`paired_table`) has one row per (model, dataset, method, seed, metric, explainer,
start-layer policy) at the configured thresholds and normalisation; the figure (:func:`paired_figure`)
draws it for one (model, dataset) and the primary metric: a panel per statistic, a row of panels per
explainer, a marker with its interval per (method, start-layer policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from rationality import schema
from rationality.progress import track
from rationality.errors import StoreError
from rationality.report.bootstrap import (
    DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, STATISTICS, configured_cut_offs, outcome_columns,
    pooled_bootstrap, statistics_from_counts,
)
from rationality.report.figures import empty_figure, method_colors, method_legend, panel_figure, save_figure
from rationality.report.tables import (
    KEY_COLUMNS, METRIC_LABELS, START_LAYER_POLICIES, align_samples, open_scores, with_seed_column,
)
from rationality.scoring.localisation import metric_class
from rationality.scoring.metrics import DEFAULT_THRESHOLD, Outcome, UndefinedPolicy

ZERO_SHOT = "zero_shot"
#: The columns of :func:`paired_table`.
PAIRED_COLUMNS = [*KEY_COLUMNS, "normalization", "threshold", "reference", "n",
                  *(f"{prefix}{name}{suffix}" for name in STATISTICS
                    for prefix, suffix in (("", ""), ("reference_", ""), ("delta_", ""), ("delta_", "_low"),
                                           ("delta_", "_high"))),
                  "confidence", "resamples", "bootstrap_seed", "undefined_policy"]


def run_groups(stores: Sequence[xr.Dataset]) -> dict[tuple[str, str], dict[str, list[xr.Dataset]]]:
    """Clean stores (severity 0) grouped by (model, dataset), then by method: a method's stores are its seeds."""
    groups: dict[tuple[str, str], dict[str, list[xr.Dataset]]] = {}
    for scores in stores:
        if int(scores.attrs[schema.ATTR_SEVERITY]) == 0:
            key = (str(scores.attrs[schema.ATTR_MODEL]), str(scores.attrs[schema.ATTR_DATASET]))
            groups.setdefault(key, {}).setdefault(str(scores.attrs[schema.ATTR_METHOD]), []).append(scores)
    return groups


def zero_shot_method(group: Mapping[str, Sequence[xr.Dataset]], where: tuple[str, str]) -> str | None:
    """The one zero-shot method of a (model, dataset) group; None without one.

    Raises:
        StoreError: several zero-shot methods or runs (which would be the reference is ambiguous).
    """
    found = [method for method, runs in group.items() if runs[0].attrs[schema.ATTR_METHOD_KIND] == ZERO_SHOT]
    if len(found) > 1 or (found and len(group[found[0]]) > 1):
        raise StoreError(f"{where[0]} on {where[1]}: several zero-shot stores ({found}); paired differences need "
                         "exactly one reference: give one")
    return found[0] if found else None


def aligned_codes(stores: Sequence[xr.Dataset], policies: Sequence[str], undefined: UndefinedPolicy,
                  cut_offs: Mapping[str, Sequence[float]], normalizations: Sequence[str] | None = None,
                  purpose: str = "a paired difference") -> tuple[list[dict[str, object]], np.ndarray]:
    """Outcome codes of stores of the same samples, joined by sample id (in sample-id order, so that
    resamples do not depend on how a store orders its samples).

    Returns:
        The columns' keys (of the first store; see :func:`~rationality.report.bootstrap.outcome_columns`)
        and codes [n, S, C] of the S stores.

    Raises:
        StoreError: the stores hold different samples, or different metrics, explainers or start layers.
    """
    columns = [outcome_columns(store, policies, undefined, cut_offs, normalizations)
               for store in align_samples([stores[0].sortby(schema.SAMPLE), *stores[1:]], purpose)]
    keys = columns[0][0]

    def condition(key: Mapping[str, object]) -> tuple[object, ...]:
        return tuple(key[name] for name in ("metric", "normalization", "threshold", "explainer", "start_layer_policy"))

    if any([condition(key) for key in other] != [condition(key) for key in keys] for other, _ in columns[1:]):
        raise StoreError(f"the stores of {keys[0]['model']} on {keys[0]['dataset']} hold different metrics, "
                         f"explainers or start layers; {purpose} needs them scored alike")
    return keys, np.stack([codes for _, codes in columns], axis=1)


def paired_codes(runs: Sequence[xr.Dataset], reference: xr.Dataset, policies: Sequence[str],
                 undefined: UndefinedPolicy, cut_offs: Mapping[str, Sequence[float]],
                 normalizations: Sequence[str] | None = None) -> tuple[list[dict[str, object]], np.ndarray, np.ndarray]:
    """Outcome codes of runs of one method and of the reference, joined by sample id.

    Returns:
        The columns' keys (of the first run), codes [n, R, C] of the R runs and [n, C] of the reference.

    Raises:
        StoreError: the runs and the reference hold different samples, metrics, explainers or start layers.
    """
    keys, codes = aligned_codes([*runs, reference], policies, undefined, cut_offs, normalizations)
    return keys, codes[:, :-1], codes[:, -1]


def statistics_of(codes: np.ndarray) -> np.ndarray:
    """Accuracy, PT and IR [C, 3] of outcome codes [n, C]."""
    return statistics_from_counts((codes[..., None] == np.arange(len(Outcome))).sum(axis=0))


def paired_table(score_paths: Sequence[str | Path], threshold: float = DEFAULT_THRESHOLD,
                 undefined: UndefinedPolicy = "invalid", policies: Sequence[str] = START_LAYER_POLICIES,
                 thresholds: Mapping[str, float] | None = None, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE, progress: bool = True) -> pd.DataFrame:
    """Every run against the zero-shot run of its (model, dataset), on the same samples.

    Columns: the keys of :func:`~rationality.report.tables.rationality_table` (``model`` ...
    ``start_layer``), ``normalization``, ``threshold``, ``reference`` (the zero-shot method), ``n``,
    then per statistic of :data:`~rationality.report.bootstrap.STATISTICS`: ``<s>`` (the method's),
    ``reference_<s>``, ``delta_<s>``, ``delta_<s>_low``, ``delta_<s>_high``; then ``confidence``,
    ``resamples``, ``bootstrap_seed``, ``undefined_policy``. (model, dataset) groups without a
    zero-shot run give no rows.

    Raises:
        StoreError: a store is missing or invalid, stores were scored with different options, a group
            has several zero-shot stores, or a run holds other samples than its zero-shot run.
    """
    rows = []
    groups = run_groups(open_scores(score_paths))
    for where, group in track(groups.items(), "paired differences", "datasets", enabled=progress):
        reference_method = zero_shot_method(group, where)
        if reference_method is None:
            continue
        reference = group[reference_method][0]
        for method, runs in group.items():
            if method == reference_method:
                continue
            for run in runs:
                keys, codes, reference_codes = paired_codes(
                    [run], reference, policies, undefined, configured_cut_offs(run, threshold, thresholds))
                delta, low, high = pooled_bootstrap(codes, reference_codes, resamples, seed, confidence)
                own, theirs = statistics_of(codes[:, 0]), statistics_of(reference_codes)
                for k, key in enumerate(keys):
                    values = {}
                    for s, name in enumerate(STATISTICS):
                        values.update({name: own[k, s], f"reference_{name}": theirs[k, s], f"delta_{name}": delta[k, s],
                                       f"delta_{name}_low": low[k, s], f"delta_{name}_high": high[k, s]})
                    rows.append({**key, "reference": reference_method, "n": len(codes), **values,
                                 "confidence": confidence, "resamples": resamples, "bootstrap_seed": seed,
                                 "undefined_policy": undefined})
    return with_seed_column(pd.DataFrame(rows, columns=PAIRED_COLUMNS))


def paired_figure(table: pd.DataFrame, model: str, dataset: str, metric: str | None = None) -> Figure:
    """Δaccuracy, ΔPT and ΔIR from zero-shot of one (model, dataset), from :func:`paired_table`'s rows.

    Panels: a column per statistic, a row per explainer; y: one line per (method, seed) run; a marker
    and its interval per start-layer policy; a dashed line at 0 (no difference). ``metric``: whose PT
    and IR (default: the table's first, the primary one).
    """
    rows = table[(table["model"] == model) & (table["dataset"] == dataset)]
    if rows.empty:
        return empty_figure(f"no paired difference for {model} on {dataset}: it needs a zero-shot run and another run")
    metric = metric or str(rows["metric"].iloc[0])
    rows = rows[rows["metric"] == metric]
    runs = list(dict.fromkeys(zip(rows["method"], rows["seed"])))
    labels = [method if pd.isna(seed) or len([r for r in runs if r[0] == method]) == 1 else f"{method} (seed {seed})"
              for method, seed in runs]
    policies = list(dict.fromkeys(rows["start_layer_policy"]))
    explainers = list(dict.fromkeys(rows["explainer"]))
    colors = method_colors(policies)
    figure, axes = panel_figure(len(explainers), len(STATISTICS), panel=(3.2, 1.4 + 0.45 * len(runs)))
    offsets = np.linspace(-0.25, 0.25, len(policies)) if len(policies) > 1 else np.zeros(1)
    for row_axes, explainer in zip(axes, explainers):
        for ax, statistic in zip(row_axes, STATISTICS):
            for offset, policy in zip(offsets, policies):
                if statistic == "accuracy" and policy != policies[0]:
                    continue  # accuracy does not depend on the heatmaps
                chosen = rows[(rows["explainer"] == explainer) & (rows["start_layer_policy"] == policy)]
                for y, (method, seed) in enumerate(runs):
                    found = chosen[(chosen["method"] == method)
                                   & ((chosen["seed"] == seed) if not pd.isna(seed) else chosen["seed"].isna())]
                    if found.empty:
                        continue
                    line = found.iloc[0]
                    value = line[f"delta_{statistic}"]
                    error = [[value - line[f"delta_{statistic}_low"]], [line[f"delta_{statistic}_high"] - value]]
                    ax.errorbar(value, y + offset, xerr=error, fmt="o", color=colors[policy], markersize=3,
                                capsize=2, label=f"start layer: {policy}")
            ax.axvline(0.0, color="0.4", linestyle="--", linewidth=0.8)
            ax.set_yticks(range(len(runs)), labels)
            ax.set_ylim(len(runs) - 0.5, -0.5)
            ax.set_xlabel(f"Δ {METRIC_LABELS[statistic]} vs zero-shot")
            ax.grid(True, axis="x", alpha=0.3)
            ax.set_title(explainer if statistic == "accuracy" else f"{explainer}, {metric_class(metric).title}",
                         fontsize="small")
    threshold = rows["threshold"].iloc[0]
    figure.suptitle(f"{model} on {dataset}: difference from zero-shot on the same samples "
                    f"({metric_class(metric).title} threshold {threshold:g}, {rows['confidence'].iloc[0]:.0%} paired "
                    f"bootstrap intervals)", fontsize="medium")
    method_legend(figure, axes)
    return figure


def write_paired_table(score_paths: Sequence[str], out: str, **options) -> pd.DataFrame:
    """Write :func:`paired_table` (``options``: its keyword arguments) as CSV; returns it."""
    table = paired_table(score_paths, **options)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6f")
    return table


def read_table(path: str | Path) -> pd.DataFrame:
    """A table this package wrote (``seed`` as nullable integers).

    Raises:
        StoreError: the file is missing or not a CSV table.
    """
    try:
        return pd.read_csv(path, dtype={"seed": "Int64", "start_layer": "Int64"})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise StoreError(f"{path}: cannot be read as a table ({exc})") from exc


def write_paired_figure(table_path: str, model: str, dataset: str, out: str, metric: str | None = None) -> None:
    """Write :func:`paired_figure` of the paired table ``table_path`` (a CSV of :func:`paired_table`) to ``out``."""
    save_figure(paired_figure(read_table(table_path), model, dataset, metric), out)
