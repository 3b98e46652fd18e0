"""Small in-memory scores stores with chosen or random values, for the report tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from rationality import schema
from rationality.scoring.rma import NORMALIZATIONS


def scores_store(rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray, labels: np.ndarray | None = None,
                 ids: list[str] | None = None, explainers: tuple[str, ...] | None = None,
                 metrics: tuple[str, ...] = ("rma",), **attrs: Any) -> xr.Dataset:
    """A valid scores dataset from rma / edge_case [n, E, S] (the same values for every metric and
    normalisation; or [n, M, E, S], one slice per metric) and correct [n] (labels default to 0)."""
    rma = np.asarray(rma, dtype=np.float32)
    edge_case = np.asarray(edge_case, dtype=np.int8)
    if rma.ndim == 3:
        rma, edge_case = (np.repeat(a[:, None], len(metrics), axis=1) for a in (rma, np.broadcast_to(edge_case, rma.shape)))
    n, _, n_explainers, n_layers = rma.shape
    per_normalization = [np.repeat(a[:, None], len(NORMALIZATIONS), axis=1) for a in (rma, edge_case)]
    labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
    correct = np.asarray(correct, dtype=bool)
    defaults = dict(model="mock", dataset="mock", split="test", method="zs", method_kind="zero_shot",
                    paper_start_layer=n_layers - 1, geometry={"resize": 16, "crop": 16},
                    scoring={"normalization": "minmax", "metrics": list(metrics)},
                    cache_path="cache.zarr", masks_path="masks.zarr", corruption=schema.CLEAN, severity=0, seed=None,
                    **schema.MOCK_DATASET)
    dims = (schema.SAMPLE, schema.NORMALIZATION, schema.METRIC, schema.EXPLAINER, schema.START_LAYER)
    return xr.Dataset(
        {schema.SCORE: (dims, per_normalization[0]), schema.EDGE_CASE: (dims, per_normalization[1]),
         schema.LABEL: ((schema.SAMPLE,), labels),
         schema.PREDICTION: ((schema.SAMPLE,), np.where(correct, labels, labels + 1).astype(np.int32)),
         schema.CORRECT: ((schema.SAMPLE,), correct)},
        coords={schema.SAMPLE: schema.sample_ids(ids or [f"mock-{i:04d}" for i in range(n)]),
                schema.NORMALIZATION: np.asarray(NORMALIZATIONS, dtype=object),
                schema.METRIC: np.asarray(metrics, dtype=object),
                schema.EXPLAINER: np.asarray(explainers or [f"explainer{e}" for e in range(n_explainers)], dtype=object),
                schema.START_LAYER: np.arange(n_layers, dtype=np.int32)},
        attrs=schema.provenance(schema.StoreKind.SCORES, **{**defaults, **attrs}),
    )


def random_scores(n: int = 40, seed: int = 0, n_layers: int = 3, explainers: tuple[str, ...] = ("generic_attention",),
                  undefined_share: float = 0.1, accuracy: float = 0.6, n_classes: int = 3, **attrs: Any) -> xr.Dataset:
    """A scores dataset with uniform random RMA, some undefined samples (every edge case) and random correctness."""
    rng = np.random.default_rng(seed)
    shape = (n, len(explainers), n_layers)
    rma = rng.random(shape).astype(np.float32)
    edge = np.where(rng.random(shape) < undefined_share, rng.integers(1, len(schema.EdgeCase), shape), 0)
    rma[edge != 0] = np.nan
    return scores_store(rma, edge, rng.random(n) < accuracy, labels=np.arange(n) % n_classes,
                        explainers=explainers, **attrs)
