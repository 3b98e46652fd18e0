"""The PT / IR table from scores stores: thresholds and start-layer policies applied, no model run.

One row per (model, dataset, method, seed, localisation metric, explainer, start-layer policy), at the
metric's threshold and the stores' normalisation, with the store's corruption and severity (``none`` and 0 for clean data; the workflow's tables hold clean stores only, out-of-distribution
stores go to the severity figures of :mod:`rationality.report.ood`). Policies:

* ``paper``: the start layer the paper's code used for the method (last block for prompt-based
  methods, all blocks for head-based ones), recorded in each store;
* ``all_blocks``: start layer 0 for every method;
* ``last_block``: start layer L-1 for every method.

The two uniform policies compare methods like for like; ``paper`` reproduces the paper's choice.

Tables and figures that show one metric show the stores' *primary* metric, the first of their
``metric`` dimension (the config's first ``scoring.metrics``, RMA by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from rationality import schema
from rationality.errors import StoreError
from rationality.report.made_with import scoring_normalization
from rationality.scoring.localisation import evidence_rule, threshold_for
from rationality.scoring.metrics import DEFAULT_THRESHOLD, UndefinedPolicy, rationality_metrics

START_LAYER_POLICIES: tuple[str, ...] = ("paper", "all_blocks", "last_block")
TABLE_COLUMNS = [
    "model", "dataset", "method", "method_kind", "seed", "corruption", "severity", "metric", "explainer",
    "start_layer_policy", "start_layer", "accuracy", "pt", "ir", "rr", "rw", "wr", "ww", "n", "n_undefined",
    "n_empty_mask", "n_zero_sum_heatmap", "n_non_finite_heatmap", "n_full_mask", "n_excluded", "threshold",
    "undefined_policy", "normalization",
]
#: The columns that say which result a row is (:func:`row_key`).
KEY_COLUMNS = TABLE_COLUMNS[:TABLE_COLUMNS.index("start_layer") + 1]
#: How tables and figures name the three metrics.
METRIC_LABELS = {"accuracy": "accuracy", "pt": "PT", "ir": "IR"}


def policy_start_layer(policy: str, scores: xr.Dataset) -> int:
    """The start layer a policy picks for one scores (or cache) store."""
    n_layers = scores.sizes[schema.START_LAYER]
    if policy == "paper":
        return int(scores.attrs[schema.ATTR_PAPER_START_LAYER])
    if policy == "all_blocks":
        return 0
    if policy == "last_block":
        return n_layers - 1
    raise ValueError(f"start-layer policy must be one of {START_LAYER_POLICIES}, got {policy!r}")


def primary_metric(scores: xr.Dataset) -> str:
    """The metric a one-metric table or figure shows: the first of the store's ``metric`` dimension."""
    return str(scores.coords[schema.METRIC].values[0])


def metric_view(scores: xr.Dataset, metric: str | None = None, normalization: str | None = None) -> xr.Dataset:
    """One metric under one normalisation: the store with ``score`` and ``edge_case`` (sample, explainer,
    start_layer). Default: the primary metric and the store's normalisation.

    Raises:
        StoreError: the store holds no such metric.
    """
    metric = metric or primary_metric(scores)
    if metric not in scores.indexes[schema.METRIC]:
        raise StoreError(f"{scores.attrs.get(schema.ATTR_CACHE_PATH, 'a scores store')} was scored without metric "
                         f"{metric!r} (it holds {list(scores.indexes[schema.METRIC])}): re-score it")
    return scores.sel({schema.METRIC: metric, schema.NORMALIZATION: normalization or scoring_normalization(scores)})


def method_label(store: xr.Dataset) -> str:
    """The store's method, with its corruption and severity for an out-of-distribution store (``ft, fog 5``)."""
    severity = int(store.attrs.get(schema.ATTR_SEVERITY, 0))
    shift = f", {store.attrs[schema.ATTR_CORRUPTION]} {severity}" if severity else ""
    return f"{store.attrs[schema.ATTR_METHOD]}{shift}"


def align_samples(stores: Sequence[xr.Dataset], purpose: str) -> list[xr.Dataset]:
    """Every store in the first one's sample order (joined by sample id, never by position).

    Args:
        purpose: what needs the same samples, for the error (e.g. ``"a gallery"``).

    Raises:
        StoreError: if the stores do not hold the same sample ids.
    """
    ids = stores[0].indexes[schema.SAMPLE]
    aligned = []
    for store in stores:
        if not store.indexes[schema.SAMPLE].equals(ids):
            if set(store.indexes[schema.SAMPLE]) != set(ids):
                raise StoreError(f"the stores of {method_label(stores[0])} and {method_label(store)} hold "
                                 f"different samples; {purpose} needs the same samples in every store")
            store = store.sel({schema.SAMPLE: ids})
        aligned.append(store)
    return aligned
def store_run(store: xr.Dataset) -> str:
    """The run a store holds, for messages: ``model/dataset/method``, plus ``corruption-s<severity>`` when shifted."""
    run = "/".join(str(store.attrs[key]) for key in (schema.ATTR_MODEL, schema.ATTR_DATASET, schema.ATTR_METHOD))
    severity = int(store.attrs.get(schema.ATTR_SEVERITY, 0))
    return f"{run}/{store.attrs[schema.ATTR_CORRUPTION]}-s{severity}" if severity else run


def store_explainer(store: xr.Dataset, explainer: str | None) -> str:
    """``explainer``, or the store's first when None.

    Raises:
        StoreError: the store holds no heatmaps of ``explainer`` (naming its run and the explainers it holds).
    """
    held = [str(e) for e in store.coords[schema.EXPLAINER].values]
    if explainer is None:
        return held[0]
    if explainer not in held:
        raise StoreError(f"the {store.attrs[schema.ATTR_KIND]} store of {store_run(store)} holds no {explainer!r} "
                         f"heatmaps; it holds {', '.join(held)}")
    return explainer


def open_scores(score_paths: Sequence[str | Path]) -> list[xr.Dataset]:
    """Open scores stores that may share a table or a figure.

    Raises:
        StoreError: a store is missing or invalid, given twice, holds the same run as another one, or
            stores were scored with different options.
    """
    resolved = [Path(path).resolve() for path in score_paths]
    repeated = [str(path) for path, real in zip(score_paths, resolved) if resolved.count(real) > 1]
    if repeated:
        raise StoreError(f"{', '.join(repeated)}: given more than once; give each scores store once")
    stores = [(str(path), schema.open_store(str(path), schema.StoreKind.SCORES)) for path in score_paths]
    scoring = {path: scores.attrs[schema.ATTR_SCORING] for path, scores in stores}
    if len(set(scoring.values())) > 1:
        raise StoreError("scores stores were made with different scoring options and cannot share a table: "
                         + "; ".join(f"{path}: {options}" for path, options in scoring.items()))
    runs: dict[tuple[str, object], str] = {}
    for path, scores in stores:  # the runs of a method's seeds are distinct runs
        seed = scores.attrs.get(schema.ATTR_SEED)
        other = runs.setdefault((store_run(scores), seed), path)
        if other != path:
            raise StoreError(f"{other} and {path} both hold run {store_run(scores)}"
                             + (f" (seed {seed})" if seed is not None else "")
                             + "; a table or figure takes one store per run")
    return [scores for _, scores in stores]


def edge_case_counts(edge_case: np.ndarray) -> dict[str, int]:
    """``n_<edge case>`` for every undefined-RMA reason of :class:`~rationality.schema.EdgeCase` ([n] codes)."""
    counts = np.bincount(np.asarray(edge_case, dtype=np.int64).ravel(), minlength=len(schema.EdgeCase))
    return {f"n_{case.name.lower()}": int(counts[case]) for case in schema.EdgeCase if case != schema.EdgeCase.OK}


def row_key(scores: xr.Dataset, explainer: str, policy: str, metric: str | None = None) -> dict[str, object]:
    """The columns that say which result a row is, ``model`` to ``start_layer``, for one (store, metric,
    explainer, policy); ``metric`` defaults to the primary one."""
    return {
        "model": scores.attrs[schema.ATTR_MODEL], "dataset": scores.attrs[schema.ATTR_DATASET],
        "method": scores.attrs[schema.ATTR_METHOD], "method_kind": scores.attrs[schema.ATTR_METHOD_KIND],
        "seed": scores.attrs[schema.ATTR_SEED], "corruption": scores.attrs[schema.ATTR_CORRUPTION],
        "severity": int(scores.attrs[schema.ATTR_SEVERITY]), "metric": metric or primary_metric(scores),
        "explainer": explainer, "start_layer_policy": policy, "start_layer": policy_start_layer(policy, scores),
    }


def store_metrics(scores: xr.Dataset) -> list[str]:
    """The metrics a store holds, in its order (the first is the primary one)."""
    return [str(m) for m in scores.coords[schema.METRIC].values]


def rationality_table(score_paths: Sequence[str | Path], threshold: float = DEFAULT_THRESHOLD,
                      undefined: UndefinedPolicy = "invalid", policies: Sequence[str] = START_LAYER_POLICIES,
                      thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Accuracy, quadrants, PT, IR and edge-case counts of every scores store and metric; columns
    :data:`TABLE_COLUMNS`.

    Args:
        threshold: RMA's threshold (the paper's 0.5).
        thresholds: other metrics' thresholds by name (default: each metric's own).

    Raises:
        StoreError: a store is missing or invalid, or stores were scored with different options.
    """
    rows = []
    for scores in open_scores(score_paths):
        correct = scores[schema.CORRECT].values
        explainers = [str(e) for e in scores.coords[schema.EXPLAINER].values]
        for metric in store_metrics(scores):
            view = metric_view(scores, metric)
            values, edge = view[schema.SCORE].values, view[schema.EDGE_CASE].values
            cut, rule = threshold_for(metric, threshold, thresholds), evidence_rule(metric)
            for policy in policies:
                layer = policy_start_layer(policy, scores)
                for e, explainer in enumerate(explainers):
                    counts = rationality_metrics(values[:, e, layer], edge[:, e, layer], correct, cut, undefined,
                                                 **rule)
                    rows.append({
                        **row_key(scores, explainer, policy, metric), **counts.to_dict(),
                        **edge_case_counts(edge[:, e, layer]), "threshold": cut, "undefined_policy": undefined,
                        "normalization": scoring_normalization(scores),
                    })
    return with_seed_column(pd.DataFrame(rows, columns=TABLE_COLUMNS))


def with_seed_column(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``seed`` column as nullable integers (empty for a method the seed does not change)."""
    return table.astype({"seed": "Int64"}) if "seed" in table else table


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a long table's primary metric (that of its first row)."""
    return table[table["metric"] == table["metric"].iloc[0]] if len(table) else table


#: The columns a PT / IR table shows on a terminal (``rationality rescore``, ``evaluate``), in order.
SHOWN_COLUMNS = ["model", "dataset", "metric", "threshold", "seed", "method", "explainer", "start_layer_policy",
                 "start_layer", "accuracy", "pt", "ir", "rr", "rw", "wr", "ww", "n", "n_undefined"]


def format_table(table: pd.DataFrame) -> str:
    """A PT / IR table (:data:`TABLE_COLUMNS`) as aligned text: :data:`SHOWN_COLUMNS`, 4 decimals."""
    return table[SHOWN_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4f}")
