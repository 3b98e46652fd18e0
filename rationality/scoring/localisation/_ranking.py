"""Rank statistics of upsampled heatmaps against masks, on the frame (shared by the rank-based metrics).

Ties are counted exactly and deterministically: pixels tied at the k-th highest value share the
remaining places in proportion (the expected value over every order of the tied pixels), and AUC
counts a tied (object, background) pair as one half, as ROC curves do.
"""

from __future__ import annotations

import numpy as np


def top_share(frames: np.ndarray, masks: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The share of each frame's ``k`` highest pixels that lie on the object.

    Args:
        frames: [m, P] upsampled heatmaps (P pixels each).
        masks: [m, P] bool.
        k: [m] int, 1 <= k <= P.

    Returns:
        [m] float64.
    """
    pixels = frames.shape[1]
    k = np.asarray(k, dtype=np.int64)
    if len(k) and (k == k[0]).all():
        kth = np.partition(frames, pixels - k[0], axis=1)[:, pixels - k[0]]
    else:
        kth = np.array([np.partition(row, pixels - count)[pixels - count] for row, count in zip(frames, k)],
                       dtype=frames.dtype)
    above, at = frames > kth[:, None], frames == kth[:, None]
    places_left = k - above.sum(axis=1)
    hits = (above & masks).sum(axis=1) + places_left * (at & masks).sum(axis=1) / at.sum(axis=1)
    return hits / k


def object_auc(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """ROC AUC of each frame's pixel values as a score for "on the object": [m] float64.

    The Mann-Whitney statistic over (object, background) pixel pairs, ties one half; NaN where the
    mask is empty or full.
    """
    result = np.full(len(frames), np.nan)
    for row, (values, mask) in enumerate(zip(frames, masks)):
        inside, outside = np.sort(values[mask]), np.sort(values[~mask])
        if len(inside) and len(outside):
            below = np.searchsorted(outside, inside, side="left").sum(dtype=np.int64)
            not_above = np.searchsorted(outside, inside, side="right").sum(dtype=np.int64)
            result[row] = (below + not_above) / (2.0 * len(inside) * len(outside))
    return result
