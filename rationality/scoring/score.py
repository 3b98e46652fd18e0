"""The CPU stage: join a cache store with a mask store by sample id and write per-sample RMA.

No model runs here. The join is by the ``sample`` coordinate: both stores must hold exactly the
same ids (any difference is an error that names both stores and some of the differing ids), the
same labels, and the same geometry. Heatmaps are scored chunk by chunk with Dask; each chunk's
masks are projected to the token grid once and every explainer and start layer of the chunk is
scored with a dot product (see :mod:`rationality.scoring.rma`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from rationality import schema
from rationality.errors import StoreError
from rationality.scoring.rma import NORMALIZATIONS, MaskProjector, Normalization, relevance_mass_accuracy
from rationality.store import write_dataset


@dataclass(frozen=True)
class ScoringOptions:
    """Options that change per-sample RMA (stored in the scores store's attributes).

    Attributes:
        normalization: ``minmax`` (the paper's code) or ``none``.
    """

    normalization: Normalization = "minmax"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


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


def _score_block(heatmaps: np.ndarray, masks: np.ndarray, projector: MaskProjector,
                 normalization: Normalization) -> np.ndarray:
    """[n, E, S, gy, gx] heatmaps and [n, Y, X] masks -> [n, E, S, 2] (rma, edge_case) as float64."""
    return _score_projected_block(heatmaps, projector.project(masks), masks.sum(axis=(1, 2)), projector,
                                  normalization)


def _score_projected_block(heatmaps: np.ndarray, projections: np.ndarray, areas: np.ndarray,
                           projector: MaskProjector, normalization: Normalization) -> np.ndarray:
    """Heatmaps [n, E, S, gy, gx], projected masks [n, gy, gx], areas [n] -> [n, E, S, 2] float64."""
    rma, edge = relevance_mass_accuracy(heatmaps, projections.astype(np.float64), areas, projector, normalization)
    return np.stack([rma.astype(np.float64), edge.astype(np.float64)], axis=-1)


def score_dataset(cache: xr.Dataset, masks: xr.Dataset, options: ScoringOptions,
                  cache_path: str = "<cache>", masks_path: str = "<masks>") -> xr.Dataset:
    """The (lazy) scores dataset of a cache against its masks; see :mod:`rationality.schema`.

    ``masks`` is a mask store (projected onto the grid chunk by chunk) or a projections store made
    for the cache's grid (faster: nothing to read but gy·gx numbers per sample).
    """
    masks = align_stores(cache, masks, cache_path, masks_path)
    heatmaps = cache[schema.HEATMAP].data
    if not isinstance(heatmaps, da.Array):
        heatmaps = da.from_array(heatmaps, chunks=(64, -1, -1, -1, -1))
    heatmaps = heatmaps.rechunk({0: schema.SAMPLE_CHUNK, 1: -1, 2: -1, 3: -1, 4: -1})
    grid = heatmaps.shape[3:]
    frame = (schema.json_attr(masks, schema.ATTR_GEOMETRY)["crop"],) * 2
    projector = MaskProjector(frame=frame, grid=grid)
    common = dict(new_axes={"k": 2}, concatenate=True, dtype=np.float64,
                  meta=np.empty((0, 0, 0, 0), dtype=np.float64), projector=projector,
                  normalization=options.normalization)
    samples = heatmaps.chunks[0]
    if masks.attrs[schema.ATTR_KIND] == schema.StoreKind.PROJECTIONS.value:
        if tuple(schema.json_attr(masks, schema.ATTR_GRID)) != tuple(grid):
            raise StoreError(f"{masks_path} was projected onto grid {masks.attrs[schema.ATTR_GRID]}, "
                             f"but {cache_path} has {list(grid)} heatmaps")
        scored = da.blockwise(
            _score_projected_block, "nesk", heatmaps, "nesab",
            da.asarray(masks[schema.MASK_PROJECTION].data).rechunk((samples, -1, -1)), "nab",
            da.asarray(masks[schema.MASK_AREA].data).rechunk((samples,)), "n", **common)
    else:
        mask_data = da.asarray(masks[schema.MASK].data).rechunk((samples, -1, -1))
        scored = da.blockwise(_score_block, "nesk", heatmaps, "nesab", mask_data, "nyx", **common)
    logits = cache[schema.LOGITS].data
    prediction = da.asarray(logits).argmax(axis=1).astype(np.int32)
    labels = cache[schema.LABEL].data
    per_sample = (schema.SAMPLE, schema.EXPLAINER, schema.START_LAYER)
    attrs = schema.provenance(
        schema.StoreKind.SCORES,
        **{key: schema.json_attr(cache, key) for key in (
            schema.ATTR_MODEL, schema.ATTR_DATASET, schema.ATTR_SPLIT, schema.ATTR_METHOD,
            schema.ATTR_METHOD_KIND, schema.ATTR_PAPER_START_LAYER, schema.ATTR_GEOMETRY,
            schema.ATTR_CORRUPTION, schema.ATTR_SEVERITY, *schema.DATASET_PROVENANCE)},
        scoring=asdict(options), cache_path=str(cache_path), masks_path=str(masks_path),
    )
    return xr.Dataset(
        {
            schema.RMA: (per_sample, scored[..., 0].astype(np.float32)),
            schema.EDGE_CASE: (per_sample, scored[..., 1].astype(np.int8)),
            schema.LABEL: ((schema.SAMPLE,), labels),
            schema.PREDICTION: ((schema.SAMPLE,), prediction),
            schema.CORRECT: ((schema.SAMPLE,), prediction == da.asarray(labels)),
        },
        coords={name: cache.coords[name] for name in per_sample},
        attrs=attrs,
    )


def score_stores(cache_path: str | Path, masks_path: str | Path, out_path: str | Path,
                 options: ScoringOptions, progress: bool = True, dask_address: str | None = None) -> Path:
    """Score a cache store against a mask or projections store and write the scores store crash-safely.

    Args:
        dask_address: a running Dask scheduler (``tcp://host:8786``) to compute on; its workers must
            see the same paths. None computes here with Dask's threaded scheduler.
    """
    cache = schema.open_store(str(cache_path), schema.StoreKind.CACHE)
    masks = schema.open_store(str(masks_path), (schema.StoreKind.MASKS, schema.StoreKind.PROJECTIONS))
    scores = score_dataset(cache, masks, options, str(cache_path), str(masks_path))
    if dask_address:
        from distributed import Client

        with Client(dask_address):
            return write_dataset(scores, out_path)
    return write_dataset(scores, out_path, progress=progress)
