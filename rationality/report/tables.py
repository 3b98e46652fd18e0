"""The PT / IR table from scores stores: thresholds and start-layer policies applied, no model run.

One row per (model, dataset, method, explainer, start-layer policy), with the store's corruption and
severity (``none`` and 0 for clean data; the workflow's tables hold clean stores only, out-of-distribution
stores go to the severity figures of :mod:`rationality.report.ood`). Policies:

* ``paper``: the start layer the paper's code used for the method (last block for prompt-based
  methods, all blocks for head-based ones), recorded in each store;
* ``all_blocks``: start layer 0 for every method;
* ``last_block``: start layer L-1 for every method.

The two uniform policies compare methods like for like; ``paper`` reproduces the paper's choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from rationality import schema
from rationality.errors import StoreError
from rationality.report.made_with import scoring_normalization
from rationality.scoring.metrics import DEFAULT_THRESHOLD, UndefinedPolicy, rationality_metrics

START_LAYER_POLICIES: tuple[str, ...] = ("paper", "all_blocks", "last_block")
TABLE_COLUMNS = [
    "model", "dataset", "method", "method_kind", "corruption", "severity", "explainer", "start_layer_policy",
    "start_layer", "accuracy", "pt", "ir", "rr", "rw", "wr", "ww", "n", "n_undefined", "n_empty_mask", "n_zero_sum_heatmap",
    "n_non_finite_heatmap", "n_excluded", "threshold", "undefined_policy", "normalization",
]
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
    runs: dict[str, str] = {}
    for path, scores in stores:
        other = runs.setdefault(store_run(scores), path)
        if other != path:
            raise StoreError(f"{other} and {path} both hold run {store_run(scores)}; a table or figure takes one "
                             "store per run")
    return [scores for _, scores in stores]


def edge_case_counts(edge_case: np.ndarray) -> dict[str, int]:
    """``n_<edge case>`` for every undefined-RMA reason of :class:`~rationality.schema.EdgeCase` ([n] codes)."""
    counts = np.bincount(np.asarray(edge_case, dtype=np.int64).ravel(), minlength=len(schema.EdgeCase))
    return {f"n_{case.name.lower()}": int(counts[case]) for case in schema.EdgeCase if case != schema.EdgeCase.OK}


def row_key(scores: xr.Dataset, explainer: str, policy: str) -> dict[str, object]:
    """The columns that say which result a row is, ``model`` to ``start_layer``, for one (store, explainer, policy)."""
    return {
        "model": scores.attrs[schema.ATTR_MODEL], "dataset": scores.attrs[schema.ATTR_DATASET],
        "method": scores.attrs[schema.ATTR_METHOD], "method_kind": scores.attrs[schema.ATTR_METHOD_KIND],
        "corruption": scores.attrs[schema.ATTR_CORRUPTION], "severity": int(scores.attrs[schema.ATTR_SEVERITY]),
        "explainer": explainer, "start_layer_policy": policy, "start_layer": policy_start_layer(policy, scores),
    }


def rationality_table(score_paths: Sequence[str | Path], threshold: float = DEFAULT_THRESHOLD,
                      undefined: UndefinedPolicy = "invalid",
                      policies: Sequence[str] = START_LAYER_POLICIES) -> pd.DataFrame:
    """Accuracy, quadrants, PT, IR and edge-case counts of every scores store; columns :data:`TABLE_COLUMNS`.

    Raises:
        StoreError: a store is missing or invalid, or stores were scored with different options.
    """
    rows = []
    for scores in open_scores(score_paths):
        rma = scores[schema.RMA].values
        edge = scores[schema.EDGE_CASE].values
        correct = scores[schema.CORRECT].values
        explainers = [str(e) for e in scores.coords[schema.EXPLAINER].values]
        for policy in policies:
            layer = policy_start_layer(policy, scores)
            for e, explainer in enumerate(explainers):
                metrics = rationality_metrics(rma[:, e, layer], edge[:, e, layer], correct, threshold, undefined)
                rows.append({
                    **row_key(scores, explainer, policy), **metrics.to_dict(), **edge_case_counts(edge[:, e, layer]),
                    "threshold": threshold, "undefined_policy": undefined,
                    "normalization": scoring_normalization(scores),
                })
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
