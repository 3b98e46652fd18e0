"""Relevance mass accuracy, RMA = sum(H ⊙ M) / sum(H), on the token grid.

The heatmap H [gy, gx] is compared with the mask M [Y, X] in the model-input frame after bilinear
upsampling (``align_corners=False``, as ``torch.nn.functional.interpolate`` and the paper's code),
optionally min-max normalised. Bilinear upsampling is linear and separable, up(H) = U_y H U_xᵀ, so

    sum(up(H) ⊙ M) = <H, U_yᵀ M U_x>        sum(up(H)) = <H, U_yᵀ 1 U_x>,

and each mask is projected to the grid once (:meth:`MaskProjector.project`); scoring a heatmap is
then a dot product of gy·gx terms. Min-max normalisation (up(H) - m) / (max - m) only needs
m = min(up(H)): the scale cancels in the ratio,

    RMA = (<H, P_M> - m·|M|) / (<H, P_1> - m·Y·X).

m is exact without upsampling: on each cell between two source rows (columns) the interpolant is
linear along that axis, so its extreme over the output pixels of the cell lies on the cell's first
or last output row (column); the minimum over those ~2gy × 2gx candidate pixels is the minimum over
all Y × X pixels. Both identities are tested against an explicit upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rationality.schema import EdgeCase

Normalization = Literal["minmax", "none"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "none")


def _source_cells(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the lower source index and the weight of the upper one.

    PyTorch's rule for align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0 below
    and at in - 1 above.
    """
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    return lower, source - lower


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """U [out_size, in_size] with up(h) = U h for 1-D bilinear resampling, align_corners=False."""
    lower, weight_upper = _source_cells(out_size, in_size)
    upper = np.minimum(lower + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - weight_upper)
    np.add.at(matrix, (rows, upper), weight_upper)
    return matrix


def extreme_candidates(out_size: int, in_size: int) -> np.ndarray:
    """Output indices that can hold the extreme of any 1-D bilinear interpolant.

    Output indices sharing a lower source index form a cell in which the interpolant is linear in
    a weight that grows with the index, so its extremes lie on the cell's first and last index.
    """
    lower, _ = _source_cells(out_size, in_size)
    starts = np.flatnonzero(np.diff(lower)) + 1
    return np.unique(np.concatenate([[0, out_size - 1], starts, starts - 1]))


@dataclass(frozen=True)
class MaskProjector:
    """Projects masks of a Y x X frame onto a gy x gx token grid for exact RMA.

    Attributes:
        frame: (Y, X), the model-input frame of the masks.
        grid: (gy, gx), the heatmap's token grid.
    """

    frame: tuple[int, int]
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_u_y", bilinear_matrix(self.frame[0], self.grid[0]))
        object.__setattr__(self, "_u_x", bilinear_matrix(self.frame[1], self.grid[1]))

    def project(self, masks: np.ndarray) -> np.ndarray:
        """U_yᵀ M U_x for masks [n, Y, X] (bool or float): [n, gy, gx] float64.

        Computed in float32 (two matrix products; exact for 0/1 masks up to float32 rounding of
        sums of at most Y·X terms), returned as float64.
        """
        u_y, u_x = self._u_y.astype(np.float32), self._u_x.astype(np.float32)
        return np.matmul(u_y.T, np.matmul(masks.astype(np.float32), u_x)).astype(np.float64)

    def project_boxes(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """U_yᵀ B U_x of each mask's bounding box B: ([n, gy, gx] float64, areas [n] int64).

        A box is separable, B = b_y b_xᵀ with b_y, b_x the rows and columns it spans, so its projection
        is the outer product of (U_yᵀ b_y) and (U_xᵀ b_x). An empty mask has an empty box (zeros).
        """
        masks = np.asarray(masks, dtype=bool)
        spans = []
        for axis, matrix in ((2, self._u_y), (1, self._u_x)):
            present = masks.any(axis=axis)  # [n, Y] rows (or [n, X] columns) holding object pixels
            inside = (np.cumsum(present, axis=1) > 0) & (np.cumsum(present[:, ::-1], axis=1)[:, ::-1] > 0)
            spans.append((inside @ matrix, inside.sum(axis=1)))
        (rows, height), (columns, width) = spans
        return rows[:, :, None] * columns[:, None, :], height * width

    @property
    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(U_y [Y, gy], U_x [X, gx]): up(H) = U_y H U_xᵀ."""
        return self._u_y, self._u_x

    @property
    def ones(self) -> np.ndarray:
        """U_yᵀ 1 U_x [gy, gx]: each grid cell's weight in sum(up(H))."""
        return np.outer(self._u_y.sum(axis=0), self._u_x.sum(axis=0))

    def extreme_candidates(self, heatmaps: np.ndarray) -> np.ndarray:
        """up(H) on the pixels that can hold its minimum or maximum: [..., cy, cx] for [..., gy, gx]."""
        u_y = self._u_y[extreme_candidates(self.frame[0], self.grid[0])]
        u_x = self._u_x[extreme_candidates(self.frame[1], self.grid[1])]
        return np.matmul(u_y, np.matmul(np.asarray(heatmaps, dtype=np.float64), u_x.T))

    def upsampled_min(self, heatmaps: np.ndarray) -> np.ndarray:
        """min over the Y x X pixels of up(H) for heatmaps [..., gy, gx]: [...]."""
        return self.extreme_candidates(heatmaps).min(axis=(-2, -1))

    def upsampled_max(self, heatmaps: np.ndarray) -> np.ndarray:
        """max over the Y x X pixels of up(H); see :meth:`upsampled_min`."""
        return self.extreme_candidates(heatmaps).max(axis=(-2, -1))


def relevance_mass_accuracy(
    heatmaps: np.ndarray, projected_masks: np.ndarray, mask_areas: np.ndarray,
    projector: MaskProjector, normalization: Normalization = "minmax",
) -> tuple[np.ndarray, np.ndarray]:
    """RMA of heatmaps against their samples' masks, with edge cases made explicit.

    Args:
        heatmaps: [n, ..., gy, gx] (any number of middle dims, e.g. explainer, start_layer).
        projected_masks: [n, gy, gx] from :meth:`MaskProjector.project`.
        mask_areas: [n] object pixels per mask.
        projector: the projector that made ``projected_masks``.
        normalization: ``minmax`` (the paper's code) or ``none``. Changes results.

    Returns:
        rma [n, ...] float32, NaN where undefined, and edge_case [n, ...] int8 (:class:`EdgeCase`),
        checked in the order non-finite heatmap, empty mask, zero-sum heatmap.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    h = np.asarray(heatmaps, dtype=np.float64)
    n, grid_cells = h.shape[0], h.shape[-2] * h.shape[-1]
    finite = np.isfinite(h).all(axis=(-2, -1))
    h = np.where(finite[..., None, None], h, 0.0)
    flat = h.reshape(n, -1, grid_cells)  # [n, K, gy*gx], K = product of the middle dims
    inside = np.matmul(flat, projected_masks.reshape(n, grid_cells, 1))[..., 0].reshape(h.shape[:-2])
    total = (flat @ projector.ones.reshape(grid_cells)).reshape(h.shape[:-2])
    expand = (slice(None),) + (None,) * (h.ndim - 3)
    area = np.broadcast_to(np.asarray(mask_areas, dtype=np.float64)[expand], inside.shape)
    if normalization == "minmax":
        candidates = projector.extreme_candidates(h)
        low, high = candidates.min(axis=(-2, -1)), candidates.max(axis=(-2, -1))
        degenerate = high - low <= 1e-12 * np.maximum(np.abs(low), 1e-30)
        inside = inside - low * area
        total = total - low * (projector.frame[0] * projector.frame[1])
    else:
        degenerate = total == 0
    edge = np.full(inside.shape, EdgeCase.OK, dtype=np.int8)
    edge[degenerate] = EdgeCase.ZERO_SUM_HEATMAP
    edge[area == 0] = EdgeCase.EMPTY_MASK
    edge[~finite] = EdgeCase.NON_FINITE_HEATMAP
    with np.errstate(divide="ignore", invalid="ignore"):
        rma = np.where(edge == EdgeCase.OK, inside / np.where(edge == EdgeCase.OK, total, 1.0), np.nan)
    return rma.astype(np.float32), edge
