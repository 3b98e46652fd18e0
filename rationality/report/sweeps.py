"""PT and IR as curves over the RMA threshold (the primary metric's) and over the start layer, from scores stores.

The threshold sweep sorts each column's defined RMA once, split by correct and wrong predictions;
the number of valid samples at every threshold t is then a binary search (``searchsorted``), so a
sweep of T thresholds costs O(n log n + T log n) instead of T passes over the samples. Thresholds are
compared in RMA's own precision, as :func:`~rationality.scoring.metrics.rationality_metrics` does,
and the results equal it at every threshold (a test checks).

Figures (lines per method; one row of two panels, PT and IR, per explainer):

* :func:`threshold_figure`: x is the threshold in [0, 1], heatmaps at one start-layer policy;
* :func:`start_layer_figure`: x is the start layer s (blocks s..L-1 take part) at one threshold;
  a star marks the start layer of each method's ``paper`` policy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from rationality import schema
from rationality.report.figures import (
    method_colors, method_legend, panel_figure, ratio_axes, save_figure,
)
from rationality.report.made_with import scoring_normalization
from rationality.report.tables import METRIC_LABELS, metric_view, open_scores, policy_start_layer, primary_metric
from rationality.scoring.localisation import evidence_rule, metric_class
from rationality.scoring.metrics import (
    DEFAULT_THRESHOLD, UNDEFINED_POLICIES, Direction, UndefinedPolicy, rationality_metrics,
)

#: The thresholds of the sweep figure: 0, 0.005, ..., 1.
DEFAULT_THRESHOLDS = np.linspace(0.0, 1.0, 201)
SWEEP_METRICS = ("pt", "ir")


def threshold_curves(rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray, thresholds: np.ndarray,
                     undefined: UndefinedPolicy = "invalid", direction: Direction = "higher") -> tuple[np.ndarray, np.ndarray]:
    """PT and IR of one set of samples at every threshold.

    Args:
        rma: [n] float, NaN where undefined.
        edge_case: [n] :class:`~rationality.schema.EdgeCase` codes.
        correct: [n] bool.
        thresholds: [T].
        undefined: policy for samples with undefined RMA.
        direction: ``higher`` (valid at ``rma >= t``) or ``lower`` (valid at ``rma <= t``).

    Returns:
        (pt [T], ir [T]) float64, NaN where a ratio is 0/0.
    """
    if undefined not in UNDEFINED_POLICIES:
        raise ValueError(f"undefined policy must be one of {UNDEFINED_POLICIES}, got {undefined!r}")
    rma, correct = np.asarray(rma), np.asarray(correct, dtype=bool)
    if direction == "lower":  # valid at rma <= t: the same count on negated values
        rma, thresholds = -rma, -np.asarray(thresholds)
    defined = np.asarray(edge_case) == schema.EdgeCase.OK
    right, wrong = np.sort(rma[defined & correct]), np.sort(rma[defined & ~correct])
    t = np.asarray(thresholds, dtype=rma.dtype)
    rr = len(right) - np.searchsorted(right, t, side="left")
    wr = len(wrong) - np.searchsorted(wrong, t, side="left")
    undefined_right, undefined_wrong = int(np.sum(~defined & correct)), int(np.sum(~defined & ~correct))
    if undefined == "valid":
        rr, wr = rr + undefined_right, wr + undefined_wrong
    elif undefined == "paper_code":  # NaN RMA valid; an empty mask an RMA of 0, valid at thresholds <= 0
        empty = np.asarray(edge_case) == schema.EdgeCase.EMPTY_MASK
        empty_right, empty_wrong = int(np.sum(empty & correct)), int(np.sum(empty & ~correct))
        rr = rr + undefined_right - empty_right + empty_right * (t <= 0)
        wr = wr + undefined_wrong - empty_wrong + empty_wrong * (t <= 0)
    included_right = len(right) + (0 if undefined == "exclude" else undefined_right)  # RR + RW at any threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        return rr / np.float64(included_right), rr / (rr + wr).astype(np.float64)


def _labels(stores: Sequence[xr.Dataset]) -> list[str]:
    """Line labels: the method, or model/dataset/method when methods repeat across the stores."""
    methods = [str(s.attrs[schema.ATTR_METHOD]) for s in stores]
    if len(set(methods)) == len(methods):
        return methods
    return [f"{s.attrs[schema.ATTR_MODEL]}/{s.attrs[schema.ATTR_DATASET]}/{m}" for s, m in zip(stores, methods)]


def _explainers(stores: Sequence[xr.Dataset]) -> list[str]:
    return list(dict.fromkeys(str(e) for s in stores for e in s.coords[schema.EXPLAINER].values))


def _suptitle(stores: Sequence[xr.Dataset]) -> str:
    models = ", ".join(dict.fromkeys(str(s.attrs[schema.ATTR_MODEL]) for s in stores))
    datasets = ", ".join(dict.fromkeys(str(s.attrs[schema.ATTR_DATASET]) for s in stores))
    return f"{models} on {datasets}"


def threshold_sweep(stores: Sequence[xr.Dataset], policy: str = "paper", undefined: UndefinedPolicy = "invalid",
                    thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """PT and IR over the threshold: one row per (store, explainer, threshold).

    Columns: ``label`` (see :func:`threshold_figure`), ``explainer``, ``start_layer``, ``threshold``,
    ``pt``, ``ir``.
    """
    frames = []
    for scores, label in zip(stores, _labels(stores)):
        layer = policy_start_layer(policy, scores)
        view = metric_view(scores).isel({schema.START_LAYER: layer})
        rma, edge = view[schema.SCORE], view[schema.EDGE_CASE]
        correct = scores[schema.CORRECT].values
        direction = metric_class(primary_metric(scores)).direction
        for explainer in (str(e) for e in scores.coords[schema.EXPLAINER].values):
            pt, ir = threshold_curves(rma.sel({schema.EXPLAINER: explainer}).values,
                                      edge.sel({schema.EXPLAINER: explainer}).values, correct, thresholds, undefined,
                                      direction)
            frames.append(pd.DataFrame({"label": label, "explainer": explainer, "start_layer": layer,
                                        "threshold": np.asarray(thresholds, dtype=np.float64), "pt": pt, "ir": ir}))
    return pd.concat(frames, ignore_index=True)


def start_layer_sweep(stores: Sequence[xr.Dataset], threshold: float = DEFAULT_THRESHOLD,
                      undefined: UndefinedPolicy = "invalid") -> pd.DataFrame:
    """PT and IR at every start layer: one row per (store, explainer, start layer).

    Columns: ``label``, ``explainer``, ``start_layer``, ``paper`` (the store's paper start layer),
    ``pt``, ``ir``.
    """
    rows = []
    for scores, label in zip(stores, _labels(stores)):
        view = metric_view(scores)
        rma, edge = view[schema.SCORE].values, view[schema.EDGE_CASE].values
        correct = scores[schema.CORRECT].values
        paper = policy_start_layer("paper", scores)
        rule = evidence_rule(primary_metric(scores))
        for e, explainer in enumerate(str(x) for x in scores.coords[schema.EXPLAINER].values):
            for s, layer in enumerate(int(x) for x in scores.coords[schema.START_LAYER].values):
                metrics = rationality_metrics(rma[:, e, s], edge[:, e, s], correct, threshold, undefined, **rule)
                rows.append({"label": label, "explainer": explainer, "start_layer": layer, "paper": layer == paper,
                             "pt": metrics.pt, "ir": metrics.ir})
    return pd.DataFrame(rows)


def _curve_figure(curves: pd.DataFrame, labels: list[str], explainers: list[str], x: str, xlabel: str,
                  title: str) -> tuple[Figure, np.ndarray]:
    """Rows = explainers, columns = PT, IR; one line per label (a method) with ``curves[x]`` on the x axis."""
    figure, axes = panel_figure(len(explainers), len(SWEEP_METRICS))
    colors = method_colors(labels)
    for row, explainer in zip(axes, explainers):
        for ax, metric in zip(row, SWEEP_METRICS):
            for label in labels:
                curve = curves[(curves["label"] == label) & (curves["explainer"] == explainer)]
                if len(curve):
                    ax.plot(curve[x].to_numpy(), curve[metric].to_numpy(), color=colors[label], label=label,
                            marker="o" if x == "start_layer" else None, markersize=3)
            ratio_axes(ax, METRIC_LABELS[metric])
            ax.set_xlabel(xlabel)
            ax.set_title(explainer, fontsize="medium")
    figure.suptitle(title)
    method_legend(figure, axes)
    return figure, axes


def threshold_figure(stores: Sequence[xr.Dataset], policy: str = "paper", undefined: UndefinedPolicy = "invalid",
                     thresholds: np.ndarray | None = None) -> Figure:
    """PT and IR over the primary metric's threshold, lines per method (label = the store's method), rows per
    explainer; thresholds default to 201 steps over the metric's score range (0-1 for RMA)."""
    metric = metric_class(primary_metric(stores[0]))
    thresholds = np.linspace(*metric.score_range, len(DEFAULT_THRESHOLDS)) if thresholds is None else thresholds
    curves = threshold_sweep(stores, policy, undefined, thresholds)
    figure, axes = _curve_figure(curves, _labels(stores), _explainers(stores), "threshold", f"{metric.title} threshold",
                                 f"{_suptitle(stores)}: PT and IR over the {metric.title} threshold "
                                 f"(start layer: {policy})")
    for ax in axes.flat:
        ax.set_xlim(float(np.min(thresholds)), float(np.max(thresholds)))
    return figure


def start_layer_figure(stores: Sequence[xr.Dataset], threshold: float = DEFAULT_THRESHOLD,
                       undefined: UndefinedPolicy = "invalid") -> Figure:
    """PT and IR over the start layer, lines per method, rows per explainer; stars at the paper's start layers."""
    curves = start_layer_sweep(stores, threshold, undefined)
    labels = _labels(stores)
    figure, axes = _curve_figure(curves, labels, _explainers(stores), "start_layer", "start layer s (blocks s..L-1)",
                                 f"{_suptitle(stores)}: PT and IR by start layer (threshold {threshold:g})")
    colors = method_colors(labels)
    paper = curves[curves["paper"]]
    for row, explainer in zip(axes, _explainers(stores)):
        for ax, metric in zip(row, SWEEP_METRICS):
            for label in labels:
                point = paper[(paper["label"] == label) & (paper["explainer"] == explainer)]
                ax.scatter(point["start_layer"], point[metric], marker="*", s=90, color=colors[label], zorder=3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    return figure


def write_threshold_figure(score_paths: Sequence[str], out: str, policy: str = "paper",
                           undefined: UndefinedPolicy = "invalid") -> None:
    """Write :func:`threshold_figure` of scores stores (one model and dataset) to ``out``."""
    stores = open_scores(score_paths)
    save_figure(threshold_figure(stores, policy, undefined), out, made_with={
        "start_layer_policy": policy, "undefined_policy": undefined, "normalization": scoring_normalization(stores[0])})


def write_start_layer_figure(score_paths: Sequence[str], out: str, threshold: float = DEFAULT_THRESHOLD,
                             undefined: UndefinedPolicy = "invalid") -> None:
    """Write :func:`start_layer_figure` of scores stores (one model and dataset) to ``out``."""
    stores = open_scores(score_paths)
    save_figure(start_layer_figure(stores, threshold, undefined), out, made_with={
        "threshold": threshold, "undefined_policy": undefined, "normalization": scoring_normalization(stores[0])})
