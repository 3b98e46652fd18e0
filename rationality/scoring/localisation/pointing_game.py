"""Pointing game (Zhang et al. 2018): a hit when the heatmap's most relevant pixel lies on the object."""

from __future__ import annotations

import numpy as np

from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import MaskProjector, Normalization, extreme_candidates


def _class_spans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the [start, stop) run of output indices whose interpolation rows equal its own.

    Rows of a bilinear matrix are identical only where the frame's border is clamped to the first or
    last source index, so runs are contiguous; everywhere else a run is the index alone.
    """
    change = np.r_[True, (matrix[1:] != matrix[:-1]).any(axis=1)]
    starts = np.flatnonzero(change)
    stops = np.r_[starts[1:], len(matrix)]
    run = np.cumsum(change) - 1
    return starts[run], stops[run]


def _axis_candidates(matrix: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The extreme candidates of one axis, one per run of equal rows: (indices, run starts, run stops)."""
    candidates = extreme_candidates(len(matrix), in_size)
    starts, stops = _class_spans(matrix)
    _, first = np.unique(starts[candidates], return_index=True)
    candidates = candidates[np.sort(first)]
    return candidates, starts[candidates], stops[candidates]


def _any_in_runs(masks: np.ndarray, starts: np.ndarray, stops: np.ndarray, axis: int) -> np.ndarray:
    """Whether ``masks`` has a pixel in each [start, stop) run along ``axis`` (runs sorted, disjoint)."""
    bounds = np.stack([starts, stops], axis=1).ravel()
    bounds = bounds[bounds < masks.shape[axis]]
    return np.logical_or.reduceat(masks, bounds, axis=axis).take(np.arange(0, 2 * len(starts), 2), axis=axis)


@register_metric("pointing_game")
class PointingGame(LocalisationMetric):
    """Hit (1) when a pixel of the maximum of up(H) lies on the object, else miss (0).

    As Quantus' ``PointingGame``: with several pixels at the maximum, any on the object is a hit; no
    tolerance margin. Exact on the token grid: the maximum of a bilinear upsampling lies on the
    candidate pixels of :func:`~rationality.scoring.rma.extreme_candidates` (a cell's corners), and a
    candidate stands for its run of identical border pixels, so each sample's mask is reduced once to
    those runs. A heatmap whose maximum several candidates share is scored on the frame.
    """

    title = "pointing game"
    reference = "Zhang et al. 2018, Top-down neural attention by excitation backprop (IJCV)"
    default_threshold = 1.0
    thresholds = (1.0,)
    valid_rule = "a hit: the most relevant pixel lies on the object"

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        masks = batch.require_masks(self.name)
        projector: MaskProjector = batch.projector
        u_y, u_x = projector.matrices
        rows, row_starts, row_stops = _axis_candidates(u_y, projector.grid[0])
        columns, column_starts, column_stops = _axis_candidates(u_x, projector.grid[1])
        values = np.matmul(u_y[rows], np.matmul(batch.heatmaps, u_x[columns].T))  # [n, K, cy, cx]
        flat = values.reshape(*values.shape[:2], -1)
        peak = flat.max(axis=-1)
        ties = (flat == peak[..., None]).sum(axis=-1)
        on_object = _any_in_runs(_any_in_runs(masks, row_starts, row_stops, axis=1), column_starts, column_stops,
                                 axis=2).reshape(len(masks), -1)  # [n, cy * cx]
        hit = np.take_along_axis(on_object, flat.argmax(axis=-1), axis=1).astype(np.float64)
        edge = batch.edge_cases(batch.constant)
        shared = (ties > 1) & (edge == 0)
        for index, frames, frame_masks in batch.frames(shared, self.name):
            top = frames == frames.max(axis=1, keepdims=True)
            hit.reshape(-1)[index] = (top & frame_masks).any(axis=1)
        return undefined_where(edge, hit), edge
