"""Masks, and their bounding boxes, projected onto a token grid once per (dataset, split, geometry, grid).

Scoring then reads gy·gx numbers per sample instead of the full mask for the metrics that are linear
in the upsampled heatmap (see :mod:`rationality.scoring.rma` for why the projection is exact).
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from rationality import schema
from rationality.scoring.rma import MaskProjector
from rationality.store import write_dataset


def parse_grid(text: str) -> tuple[int, int]:
    """``"14x14"`` -> (14, 14)."""
    try:
        rows, columns = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"grid must look like 14x14, got {text!r}") from None
    return rows, columns


def _project_block(masks: np.ndarray, projector: MaskProjector) -> np.ndarray:
    """Masks [n, Y, X] -> projections of the masks and of their bounding boxes [n, 2, gy, gx] float32."""
    boxes, _ = projector.project_boxes(masks)
    return np.stack([projector.project(masks), boxes], axis=1).astype(np.float32)


def _box_area_block(masks: np.ndarray, projector: MaskProjector) -> np.ndarray:
    """Masks [n, Y, X] -> pixels of their bounding boxes [n] int32."""
    return projector.project_boxes(masks)[1].astype(np.int32)


def project_mask_store(masks_path: str | Path, grid: tuple[int, int], out: str | Path, progress: bool = True) -> Path:
    """Write the projections store of a mask store for a token grid (gy, gx); returns its path."""
    masks = schema.open_store(str(masks_path), schema.StoreKind.MASKS)
    mask_data = da.asarray(masks[schema.MASK].data)
    projector = MaskProjector(frame=mask_data.shape[1:], grid=grid)
    projections = mask_data.map_blocks(_project_block, projector, new_axis=1, dtype=np.float32,
                                       chunks=(mask_data.chunks[0], (2,), (grid[0],), (grid[1],)))
    areas = mask_data.sum(axis=(1, 2), dtype=np.int32)
    grid_dims = (schema.SAMPLE, schema.GRID_Y, schema.GRID_X)
    dataset = xr.Dataset(
        {schema.MASK_PROJECTION: (grid_dims, projections[:, 0]),
         schema.MASK_AREA: ((schema.SAMPLE,), areas),
         schema.BOX_PROJECTION: (grid_dims, projections[:, 1]),
         schema.BOX_AREA: ((schema.SAMPLE,), mask_data.map_blocks(_box_area_block, projector, drop_axis=(1, 2),
                                                                  dtype=np.int32)),
         schema.LABEL: ((schema.SAMPLE,), masks[schema.LABEL].data)},
        coords={schema.SAMPLE: masks.coords[schema.SAMPLE]},
        attrs=schema.provenance(
            schema.StoreKind.PROJECTIONS, dataset=masks.attrs[schema.ATTR_DATASET], split=masks.attrs[schema.ATTR_SPLIT],
            geometry=schema.json_attr(masks, schema.ATTR_GEOMETRY), grid=list(grid), masks_path=str(masks_path),
            **{key: masks.attrs[key] for key in schema.DATASET_PROVENANCE}))
    return write_dataset(dataset, out, progress=progress)
