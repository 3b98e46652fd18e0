"""The CPU stage: join a cache store with a mask store by sample id and write per-sample localisation scores.

No model runs here. The join is by the ``sample`` coordinate: both stores must hold exactly the
same ids (any difference is an error that names both stores and some of the differing ids), the
same labels, and the same geometry. Heatmaps are scored chunk by chunk with Dask: every registered
metric asked for (:mod:`rationality.scoring.localisation`), under both heatmap normalisations, for
every explainer and start layer. Metrics linear in the upsampled heatmap (RMA, energy pointing game,
attribution localisation) read each sample's mask projected onto the token grid; the others read
the masks' pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from rationality import schema
from rationality.errors import ConfigError, StoreError
from rationality.scoring.localisation import HeatmapBatch, LocalisationMetric, create_metric
from rationality.scoring.rma import NORMALIZATIONS, MaskProjector, Normalization
from rationality.store import write_dataset

#: The metrics scored when none are named: the paper's.
DEFAULT_METRICS: tuple[str, ...] = ("rma",)


@dataclass(frozen=True)
class ScoringOptions:
    """Options of the scoring stage (stored in the scores store's attributes).

    Attributes:
        normalization: the heatmap normalisation tables report by default, ``minmax`` (the paper's
            code) or ``none``; the store holds both.
        metrics: registered localisation metrics, in the order of the store's ``metric`` dimension;
            tables and figures that show one metric show the first.
    """

    normalization: Normalization = "minmax"
    metrics: tuple[str, ...] = DEFAULT_METRICS

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics must name at least one metric, each once; got {list(self.metrics)}")
        for name in self.metrics:
            create_metric(name)

    def to_dict(self) -> dict[str, object]:
        return {"normalization": self.normalization, "metrics": list(self.metrics)}


def _describe_difference(left: set[str], right: set[str], left_name: str, right_name: str) -> str:
    only_left, only_right = sorted(left - right), sorted(right - left)
    return (f"{len(only_left)} ids only in {left_name} (e.g. {only_left[:3]}), "
            f"{len(only_right)} only in {right_name} (e.g. {only_right[:3]})")


def _check_same_attrs(cache: xr.Dataset, masks: xr.Dataset, cache_path: str, masks_path: str, keys: tuple[str, ...],
                      hint: str = "") -> None:
    for key in keys:
        if schema.json_attr(cache, key) != schema.json_attr(masks, key):
            raise StoreError(f"{cache_path} and {masks_path} disagree on {key}: "
                             f"{cache.attrs[key]!r} vs {masks.attrs[key]!r}{hint}")


def align_stores(cache: xr.Dataset, masks: xr.Dataset, cache_path: str, masks_path: str) -> xr.Dataset:
    """The mask store reordered to the cache's sample order, after checking the stores agree.

    Raises:
        StoreError: different sample ids, labels, dataset (name, root, listing fingerprint), split or geometry.
    """
    _check_same_attrs(cache, masks, cache_path, masks_path, (schema.ATTR_DATASET, schema.ATTR_SPLIT,
                                                             schema.ATTR_GEOMETRY))
    cache_ids, mask_ids = cache.indexes[schema.SAMPLE], masks.indexes[schema.SAMPLE]
    if not cache_ids.equals(mask_ids):
        if set(cache_ids) != set(mask_ids):
            raise StoreError(f"{cache_path} and {masks_path} hold different samples: "
                             + _describe_difference(set(cache_ids), set(mask_ids), "the cache", "the masks"))
        masks = masks.sel({schema.SAMPLE: cache_ids})
    label_mismatch = np.flatnonzero(cache[schema.LABEL].values != masks[schema.LABEL].values)
    if len(label_mismatch):
        example = cache_ids[label_mismatch[0]]
        raise StoreError(f"{cache_path} and {masks_path} disagree on the labels of {len(label_mismatch)} samples "
                         f"(e.g. {example!r})")
    _check_same_attrs(cache, masks, cache_path, masks_path, (schema.ATTR_DATASET_ROOT,),
                      hint=" (the two stages read different copies of the dataset)")
    _check_same_attrs(cache, masks, cache_path, masks_path, (schema.ATTR_DATASET_FINGERPRINT,),
                      hint=" (the dataset's files changed between the two stages: rebuild the masks)")
    return masks


def _score_block(heatmaps: np.ndarray, projections: np.ndarray | None, areas: np.ndarray | None,
                 boxes: np.ndarray | None, box_areas: np.ndarray | None, masks: np.ndarray | None, *,
                 projector: MaskProjector, metrics: Sequence[LocalisationMetric]) -> np.ndarray:
    """Score one chunk of samples.

    Args:
        heatmaps: [n, E, S, gy, gx].
        projections, areas, boxes, box_areas: [n, gy, gx], [n], [n, gy, gx], [n] from a projections
            store, or all None (then projected here from ``masks``).
        masks: [n, Y, X] bool, or None when scoring from projections only.

    Returns:
        [n, len(NORMALIZATIONS), len(metrics), E, S, 2] float64: (score, edge case).
    """
    n, explainers, layers = heatmaps.shape[:3]
    if projections is None:
        projections, areas = projector.project(masks), masks.sum(axis=(1, 2))
        boxes, box_areas = projector.project_boxes(masks)
    batch = HeatmapBatch(heatmaps.reshape(n, explainers * layers, *heatmaps.shape[3:]), projector,
                         np.asarray(projections, np.float64), np.asarray(areas), np.asarray(boxes, np.float64),
                         np.asarray(box_areas), masks)
    result = np.empty((n, len(NORMALIZATIONS), len(metrics), explainers * layers, 2))
    for m, metric in enumerate(metrics):
        for q, normalization in enumerate(NORMALIZATIONS):
            if q and metric.normalization_invariant:
                result[:, q, m] = result[:, 0, m]
                continue
            score, edge = metric.score(batch, normalization)
            result[:, q, m, :, 0], result[:, q, m, :, 1] = score, edge
    return result.reshape(n, len(NORMALIZATIONS), len(metrics), explainers, layers, 2)


def score_dataset(cache: xr.Dataset, masks: xr.Dataset, options: ScoringOptions,
                  cache_path: str = "<cache>", masks_path: str = "<masks>",
                  projections: xr.Dataset | None = None, projections_path: str = "<projections>") -> xr.Dataset:
    """The (lazy) scores dataset of a cache against its masks; see :mod:`rationality.schema`.

    Args:
        masks: a mask store, or a projections store made for the cache's grid (then only metrics
            that do not read pixels can be scored).
        projections: the mask store's projections for the cache's grid (faster: the linear metrics
            read gy·gx numbers per sample); without it, each chunk's masks are projected on the fly.

    Raises:
        StoreError: the stores disagree (samples, labels, geometry, dataset, grid), or a metric needs
            the masks' pixels and only projections were given.
        ConfigError: a metric cannot score this frame (e.g. more top pixels than the frame holds).
    """
    masks = align_stores(cache, masks, cache_path, masks_path)
    if masks.attrs[schema.ATTR_KIND] == schema.StoreKind.PROJECTIONS.value:
        projections, projections_path, masks = masks, masks_path, None
    elif projections is not None:
        projections = align_stores(cache, projections, cache_path, projections_path)
    heatmaps = cache[schema.HEATMAP].data
    if not isinstance(heatmaps, da.Array):
        heatmaps = da.from_array(heatmaps, chunks=(64, -1, -1, -1, -1))
    heatmaps = heatmaps.rechunk({0: schema.SAMPLE_CHUNK, 1: -1, 2: -1, 3: -1, 4: -1})
    grid = heatmaps.shape[3:]
    frame = (schema.json_attr(cache, schema.ATTR_GEOMETRY)["crop"],) * 2
    metrics = [create_metric(name) for name in options.metrics]
    for metric in metrics:
        metric.check_frame(frame)
    if masks is None:
        pixel_metrics = [metric.name for metric in metrics if metric.needs_pixels]
        if pixel_metrics:
            raise StoreError(f"metrics {pixel_metrics} read the masks' pixels, but {projections_path} is a projections "
                             f"store: give the mask store it was projected from")
    samples = heatmaps.chunks[0]

    def per_sample(array: xr.DataArray, pattern: str) -> tuple[da.Array, str]:
        data = da.asarray(array.data)
        return data.rechunk((samples,) + (-1,) * (data.ndim - 1)), pattern

    if projections is not None:
        if tuple(schema.json_attr(projections, schema.ATTR_GRID)) != tuple(grid):
            raise StoreError(f"{projections_path} was projected onto grid {projections.attrs[schema.ATTR_GRID]}, "
                             f"but {cache_path} has {list(grid)} heatmaps")
        projected = [per_sample(projections[name], pattern) for name, pattern in (
            (schema.MASK_PROJECTION, "nab"), (schema.MASK_AREA, "n"), (schema.BOX_PROJECTION, "nab"),
            (schema.BOX_AREA, "n"))]
    else:
        projected = [(None, None)] * 4
    pixels = per_sample(masks[schema.MASK], "nyx") if masks is not None else (None, None)
    scored = da.blockwise(
        _score_block, "nqmesk", heatmaps, "nesab", *(item for pair in projected for item in pair), *pixels,
        new_axes={"q": len(NORMALIZATIONS), "m": len(metrics), "k": 2}, concatenate=True, dtype=np.float64,
        meta=np.empty((0,) * 6, dtype=np.float64), projector=MaskProjector(frame=frame, grid=grid), metrics=metrics)
    logits = cache[schema.LOGITS].data
    prediction = da.asarray(logits).argmax(axis=1).astype(np.int32)
    labels = cache[schema.LABEL].data
    per_heatmap = (schema.SAMPLE, schema.NORMALIZATION, schema.METRIC, schema.EXPLAINER, schema.START_LAYER)
    attrs = schema.provenance(
        schema.StoreKind.SCORES,
        **{key: schema.json_attr(cache, key) for key in (
            schema.ATTR_MODEL, schema.ATTR_DATASET, schema.ATTR_SPLIT, schema.ATTR_METHOD,
            schema.ATTR_METHOD_KIND, schema.ATTR_PAPER_START_LAYER, schema.ATTR_GEOMETRY,
            schema.ATTR_CORRUPTION, schema.ATTR_SEVERITY, schema.ATTR_SEED, *schema.DATASET_PROVENANCE)},
        scoring=options.to_dict(), cache_path=str(cache_path),
        masks_path=str(masks_path if masks is not None else projections_path),
    )
    return xr.Dataset(
        {
            schema.SCORE: (per_heatmap, scored[..., 0].astype(np.float32)),
            schema.EDGE_CASE: (per_heatmap, scored[..., 1].astype(np.int8)),
            schema.LABEL: ((schema.SAMPLE,), labels),
            schema.PREDICTION: ((schema.SAMPLE,), prediction),
            schema.CORRECT: ((schema.SAMPLE,), prediction == da.asarray(labels)),
        },
        coords={schema.SAMPLE: cache.coords[schema.SAMPLE],
                schema.NORMALIZATION: np.asarray(NORMALIZATIONS, dtype=object),
                schema.METRIC: np.asarray(options.metrics, dtype=object),
                schema.EXPLAINER: cache.coords[schema.EXPLAINER], schema.START_LAYER: cache.coords[schema.START_LAYER]},
        attrs=attrs,
    )


def score_stores(cache_path: str | Path, masks_path: str | Path, out_path: str | Path,
                 options: ScoringOptions, progress: bool = True, dask_address: str | None = None,
                 projections_path: str | Path | None = None) -> Path:
    """Score a cache store against a mask (or projections) store and write the scores store crash-safely.

    Args:
        projections_path: the projections store of ``masks_path`` for the cache's grid, if any.
        dask_address: a running Dask scheduler (``tcp://host:8786``) to compute on; its workers must
            see the same paths. None computes here with Dask's threaded scheduler.
    """
    cache = schema.open_store(str(cache_path), schema.StoreKind.CACHE)
    masks = schema.open_store(str(masks_path), (schema.StoreKind.MASKS, schema.StoreKind.PROJECTIONS))
    projections = (schema.open_store(str(projections_path), schema.StoreKind.PROJECTIONS)
                   if projections_path is not None else None)
    scores = score_dataset(cache, masks, options, str(cache_path), str(masks_path), projections, str(projections_path))
    if dask_address:
        from distributed import Client

        with Client(dask_address):
            return write_dataset(scores, out_path)
    return write_dataset(scores, out_path, progress=progress)
