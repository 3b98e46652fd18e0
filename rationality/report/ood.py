"""Accuracy, PT and IR against corruption severity, like the paper's Figure 4.

Corruption and severity are read from each scores store's attributes (``corruption``, ``severity``),
never from paths. Severity 0 is, for each model and method, the set's own clean store (severity 0
with the set's name as its dataset: the workflow's ``none-s0``, in the set's frame, e.g. ImageNet-C's
256/224 crop); without one, the clean store whose samples are the set's (an out-of-distribution
set keeps its clean dataset's sample ids, so that counterpart is found by its ids, not by paths).

Layout of :func:`ood_figure`: one row of three panels (accuracy, PT, IR) per (model,
out-of-distribution set); x is the severity 0-5, one line per method with the metric averaged over
the set's corruptions at each severity, and a shaded band from the lowest to the highest corruption
(absent with one corruption). Averaging keeps ImageNet-C's 15 corruptions readable in one row, as
the paper's figure does; ``per_corruption=True`` gives one row per corruption instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from rationality import schema
from rationality.errors import StoreError
from rationality.report.figures import (
    empty_figure, method_colors, method_legend, panel_figure, ratio_axes, save_figure,
)
from rationality.report.made_with import scoring_normalization
from rationality.report.tables import (
    METRIC_LABELS, metric_view, open_scores, policy_start_layer, primary_metric, store_explainer,
)
from rationality.scoring.localisation import evidence_rule
from rationality.scoring.metrics import DEFAULT_THRESHOLD, UndefinedPolicy, rationality_metrics

OOD_METRICS = ("accuracy", "pt", "ir")
OOD_COLUMNS = ["model", "ood_set", "clean_dataset", "corruption", "method", "severity", *OOD_METRICS]


def _metrics(scores: xr.Dataset, explainer: str | None, policy: str, threshold: float,
             undefined: UndefinedPolicy) -> dict[str, float]:
    explainer = store_explainer(scores, explainer)
    layer = policy_start_layer(policy, scores)
    column = {schema.EXPLAINER: explainer, schema.START_LAYER: layer}
    view = metric_view(scores)
    metrics = rationality_metrics(view[schema.SCORE].sel(column).values, view[schema.EDGE_CASE].sel(column).values,
                                  scores[schema.CORRECT].values, threshold, undefined,
                                  **evidence_rule(primary_metric(scores)))
    return {name: getattr(metrics, name) for name in OOD_METRICS}


def _ids(scores: xr.Dataset) -> frozenset[str]:
    return frozenset(str(i) for i in scores.indexes[schema.SAMPLE])


def ood_table(stores: Sequence[xr.Dataset], explainer: str | None = None, policy: str = "paper",
              threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid") -> pd.DataFrame:
    """Accuracy, PT and IR of every out-of-distribution store, and of its clean counterpart as severity 0.

    Args:
        stores: scores stores, clean (severity 0) and out-of-distribution ones, in any order.
        explainer: whose heatmaps (default: each store's first explainer).
        policy: start-layer policy (see :mod:`rationality.report.tables`).
        threshold: the primary metric's (see :mod:`rationality.report.tables`).

    Returns:
        Columns :data:`OOD_COLUMNS` (``clean_dataset``: the dataset of the severity-0 store, the set's
        own name for its own clean store); severity-0 rows repeat the clean values under every
        corruption (NaN when no clean store matches), so that averages over corruptions include them.

    Raises:
        StoreError: if several clean stores of one model and method hold an out-of-distribution set's
            samples, or a store holds no heatmaps of ``explainer``.
    """
    clean: dict[tuple[str, str, frozenset[str]], list[xr.Dataset]] = {}
    own_clean: dict[tuple[str, str, str], xr.Dataset] = {}  # (model, method, set) -> the set's severity 0
    for scores in stores:
        store_explainer(scores, explainer)
        if int(scores.attrs[schema.ATTR_SEVERITY]) == 0:
            model, method = scores.attrs[schema.ATTR_MODEL], scores.attrs[schema.ATTR_METHOD]
            clean.setdefault((model, method, _ids(scores)), []).append(scores)
            own_clean[(model, method, scores.attrs[schema.ATTR_DATASET])] = scores
    rows, clean_rows = [], {}
    for scores in stores:
        severity = int(scores.attrs[schema.ATTR_SEVERITY])
        if severity == 0:
            continue
        model, method = scores.attrs[schema.ATTR_MODEL], scores.attrs[schema.ATTR_METHOD]
        ood_set, corruption = scores.attrs[schema.ATTR_DATASET], scores.attrs[schema.ATTR_CORRUPTION]
        own = own_clean.get((model, method, ood_set))
        matches = [own] if own is not None else clean.get((model, method, _ids(scores)), [])
        if len(matches) > 1:
            raise StoreError(f"clean stores of datasets {[m.attrs[schema.ATTR_DATASET] for m in matches]} all hold "
                             f"the samples of {ood_set} ({model}, {method}): pass one")
        key = dict(model=model, ood_set=ood_set, corruption=corruption, method=method)
        clean_dataset = matches[0].attrs[schema.ATTR_DATASET] if matches else None
        rows.append({**key, "clean_dataset": clean_dataset, "severity": severity,
                     **_metrics(scores, explainer, policy, threshold, undefined)})
        if (model, ood_set, corruption, method) not in clean_rows:
            values = (_metrics(matches[0], explainer, policy, threshold, undefined) if matches
                      else dict.fromkeys(OOD_METRICS, np.nan))
            clean_rows[(model, ood_set, corruption, method)] = {**key, "clean_dataset": clean_dataset, "severity": 0,
                                                                **values}
    table = pd.DataFrame([*clean_rows.values(), *rows], columns=OOD_COLUMNS)
    return table.sort_values(["model", "ood_set", "corruption", "method", "severity"], kind="stable",
                             ignore_index=True)


def ood_figure(stores: Sequence[xr.Dataset], explainer: str | None = None, policy: str = "paper",
               threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid",
               per_corruption: bool = False) -> Figure:
    """Accuracy, PT and IR over severity (see the module docstring for the layout).

    Lines are labelled by method; their y values are the means over corruptions of :func:`ood_table`.
    """
    table = ood_table(stores, explainer, policy, threshold, undefined)
    if table.empty:
        return empty_figure("no out-of-distribution scores store (severity 1-5) among the inputs")
    keys = ["model", "ood_set", "corruption"] if per_corruption else ["model", "ood_set"]
    groups = list(table.groupby(keys, sort=False))
    methods = [m for m in dict.fromkeys(str(s.attrs[schema.ATTR_METHOD]) for s in stores) if m in set(table["method"])]
    colors = method_colors(methods)
    figure, axes = panel_figure(len(groups), len(OOD_METRICS))
    for row, (key, group) in zip(axes, groups):
        corruptions = list(dict.fromkeys(group["corruption"]))
        name = f"{key[0]}: " + " / ".join(str(k) for k in key[1:])
        for ax, metric in zip(row, OOD_METRICS):
            for method in methods:
                by_severity = group[group["method"] == method].groupby("severity")[metric]
                if not len(by_severity):
                    continue
                mean = by_severity.mean()
                ax.plot(mean.index.to_numpy(), mean.to_numpy(), color=colors[method], label=method, marker="o",
                        markersize=3)
                if len(corruptions) > 1:
                    ax.fill_between(mean.index.to_numpy(), by_severity.min().to_numpy(), by_severity.max().to_numpy(),
                                    color=colors[method], alpha=0.15, linewidth=0)
            ratio_axes(ax, METRIC_LABELS[metric])
            ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
            ax.set_xlabel("severity")
            suffix = "" if per_corruption else f" (mean of {len(corruptions)} corruptions)"
            ax.set_title(f"{name}{suffix}", fontsize="small")
    figure.suptitle(f"Accuracy, PT and IR under corruption (start layer: {policy}, threshold {threshold:g})")
    method_legend(figure, axes)
    return figure


def write_ood_figure(score_paths: Sequence[str], out: str, explainer: str | None = None, policy: str = "paper",
                     threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid",
                     per_corruption: bool = False) -> None:
    """Write :func:`ood_figure` of clean and out-of-distribution scores stores to ``out``."""
    stores = open_scores(score_paths)
    save_figure(ood_figure(stores, explainer, policy, threshold, undefined, per_corruption), out, made_with={
        "explainer": store_explainer(stores[0], explainer), "start_layer_policy": policy, "threshold": threshold,
        "undefined_policy": undefined, "normalization": scoring_normalization(stores[0])})
