"""Masks projected onto a token grid once per (dataset, split, geometry, grid).

Scoring then reads gy·gx numbers per sample instead of the full mask (see
:mod:`rationality.scoring.rma` for why the projection gives exact RMA).
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
    """Masks [n, Y, X] -> projections [n, gy, gx] float32."""
    return projector.project(masks).astype(np.float32)


def project_mask_store(masks_path: str | Path, grid: tuple[int, int], out: str | Path, progress: bool = True) -> Path:
    """Write the projections store of a mask store for a token grid (gy, gx); returns its path."""
    masks = schema.open_store(str(masks_path), schema.StoreKind.MASKS)
    mask_data = da.asarray(masks[schema.MASK].data)
    projector = MaskProjector(frame=mask_data.shape[1:], grid=grid)
    projections = mask_data.map_blocks(_project_block, projector, chunks=(mask_data.chunks[0], (grid[0],), (grid[1],)),
                                       dtype=np.float32)
    areas = mask_data.sum(axis=(1, 2), dtype=np.int32)
    dataset = xr.Dataset(
        {schema.MASK_PROJECTION: ((schema.SAMPLE, schema.GRID_Y, schema.GRID_X), projections),
         schema.MASK_AREA: ((schema.SAMPLE,), areas),
         schema.LABEL: ((schema.SAMPLE,), masks[schema.LABEL].data)},
        coords={schema.SAMPLE: masks.coords[schema.SAMPLE]},
        attrs=schema.provenance(
            schema.StoreKind.PROJECTIONS, dataset=masks.attrs[schema.ATTR_DATASET], split=masks.attrs[schema.ATTR_SPLIT],
            geometry=schema.json_attr(masks, schema.ATTR_GEOMETRY), grid=list(grid), masks_path=str(masks_path),
            **{key: masks.attrs[key] for key in schema.DATASET_PROVENANCE}))
    return write_dataset(dataset, out, progress=progress)
