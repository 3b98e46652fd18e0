"""RMA on the token grid: analytic cases, edge cases, and exactness of the mask-projection shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rationality.schema import EdgeCase
from rationality.scoring.rma import MaskProjector, bilinear_matrix, relevance_mass_accuracy
from rationality.scoring.score import ScoringOptions


def _rma(heatmap: np.ndarray, mask: np.ndarray, normalization: str) -> tuple[float, int]:
    """RMA and edge case of one heatmap [gy, gx] against one mask [Y, X]."""
    projector = MaskProjector(frame=mask.shape, grid=heatmap.shape)
    rma, edge = relevance_mass_accuracy(
        heatmap[None], projector.project(mask[None]), mask[None].sum(axis=(1, 2)), projector, normalization)
    assert rma.shape == edge.shape == (1,)
    assert rma.dtype == np.float32 and edge.dtype == np.int8
    return float(rma[0]), int(edge[0])


def _left_half_mask(frame: int = 64) -> np.ndarray:
    mask = np.zeros((frame, frame), dtype=bool)
    mask[:, : frame // 2] = True
    return mask


# --------------------------------------------------------------------------- analytic cases


@pytest.mark.parametrize("grid", [8, 4, 16])
def test_constant_heatmap_half_inside(grid: int) -> None:
    """A constant heatmap upsamples to a constant; the left half of the frame holds half its mass."""
    rma, edge = _rma(np.full((grid, grid), 0.37), _left_half_mask(64), "none")
    assert edge == EdgeCase.OK
    assert rma == pytest.approx(0.5, abs=1e-7)


def test_all_mass_inside() -> None:
    heatmap = np.zeros((8, 8))
    heatmap[3, 3], heatmap[3, 4] = 2.0, 1.0
    # Cell c's bilinear support at scale 8 covers output pixels 8c-4 .. 8c+11: rows 20..35, cols 20..43.
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    rma, edge = _rma(heatmap, mask, "none")
    assert edge == EdgeCase.OK
    assert rma == pytest.approx(1.0, abs=1e-7)
    rma, edge = _rma(heatmap, mask, "minmax")  # min(up(H)) = 0: min-max changes nothing
    assert (rma, edge) == (pytest.approx(1.0, abs=1e-7), EdgeCase.OK)
    # A mask that misses the support entirely holds no mass.
    far = np.zeros((64, 64), dtype=bool)
    far[48:, 48:] = True
    assert _rma(heatmap, far, "none") == (0.0, EdgeCase.OK)


def test_step_heatmap_by_hand() -> None:
    """Columns 0-3 of the grid hold 2, columns 4-7 hold 1; mask = left half of the 64 px frame.

    Along x the upsampled row is 1 + s(x) with s(x) = 1 for x <= 27, (35.5 - x) / 8 for 28 <= x <= 35
    and 0 from x = 36 on, so sum s = 28 + (7.5 + 6.5 + ... + 0.5) / 8 = 32 and, on x < 32,
    28 + (7.5 + 6.5 + 5.5 + 4.5) / 8 = 31. Without normalisation RMA = (32 + 31) / (64 + 32);
    min-max normalisation subtracts the minimum 1 (the maximum is 2), leaving s: RMA = 31 / 32.
    """
    heatmap = np.ones((8, 8))
    heatmap[:, :4] = 2.0
    mask = _left_half_mask(64)
    assert _rma(heatmap, mask, "none") == (pytest.approx(63 / 96, abs=1e-7), EdgeCase.OK)
    assert _rma(heatmap, mask, "minmax") == (pytest.approx(31 / 32, abs=1e-7), EdgeCase.OK)
    # The scale of the heatmap cancels in both.
    assert _rma(5 * heatmap, mask, "none")[0] == pytest.approx(63 / 96, abs=1e-7)
    assert _rma(5 * heatmap, mask, "minmax")[0] == pytest.approx(31 / 32, abs=1e-7)
    projector = MaskProjector(frame=(64, 64), grid=(8, 8))
    assert projector.upsampled_min(heatmap) == pytest.approx(1.0, abs=1e-12)
    assert projector.upsampled_max(heatmap) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("normalization", ["none", "minmax"])
def test_empty_mask(normalization: str) -> None:
    rma, edge = _rma(np.random.default_rng(0).random((8, 8)), np.zeros((64, 64), dtype=bool), normalization)
    assert edge == EdgeCase.EMPTY_MASK
    assert np.isnan(rma)


@pytest.mark.parametrize("normalization", ["none", "minmax"])
def test_zero_heatmap(normalization: str) -> None:
    rma, edge = _rma(np.zeros((8, 8)), _left_half_mask(), normalization)
    assert edge == EdgeCase.ZERO_SUM_HEATMAP
    assert np.isnan(rma)


def test_constant_heatmap_under_minmax_is_degenerate() -> None:
    rma, edge = _rma(np.full((8, 8), 3.0), _left_half_mask(), "minmax")
    assert edge == EdgeCase.ZERO_SUM_HEATMAP
    assert np.isnan(rma)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("normalization", ["none", "minmax"])
def test_non_finite_heatmap(bad: float, normalization: str) -> None:
    heatmap = np.random.default_rng(1).random((8, 8))
    heatmap[2, 5] = bad
    rma, edge = _rma(heatmap, _left_half_mask(), normalization)
    assert edge == EdgeCase.NON_FINITE_HEATMAP
    assert np.isnan(rma)
    # Non-finite takes precedence over an empty mask.
    rma, edge = _rma(heatmap, np.zeros((64, 64), dtype=bool), normalization)
    assert edge == EdgeCase.NON_FINITE_HEATMAP
    assert np.isnan(rma)


def test_edge_cases_are_per_entry() -> None:
    """One bad heatmap among several leaves the others' RMA untouched."""
    rng = np.random.default_rng(2)
    heatmaps = rng.random((2, 3, 8, 8))
    heatmaps[0, 1, 0, 0] = np.nan
    heatmaps[1, 2] = 0.0
    masks = np.stack([_left_half_mask(), _left_half_mask()])
    projector = MaskProjector((64, 64), (8, 8))
    rma, edge = relevance_mass_accuracy(heatmaps, projector.project(masks), masks.sum(axis=(1, 2)), projector, "none")
    expected_edge = np.zeros((2, 3), dtype=np.int8)
    expected_edge[0, 1] = EdgeCase.NON_FINITE_HEATMAP
    expected_edge[1, 2] = EdgeCase.ZERO_SUM_HEATMAP
    np.testing.assert_array_equal(edge, expected_edge)
    assert np.isnan(rma[expected_edge != 0]).all() and np.isfinite(rma[expected_edge == 0]).all()
    single, _ = relevance_mass_accuracy(
        heatmaps[:1, :1], projector.project(masks[:1]), masks[:1].sum(axis=(1, 2)), projector, "none")
    assert rma[0, 0] == single[0, 0]


# --------------------------------------------------------------------------- bilinear matrix


@pytest.mark.parametrize(("out_size", "in_size"), [(224, 14), (224, 7), (64, 8), (100, 7), (37, 5), (8, 8)])
def test_bilinear_matrix_equals_interpolate_1d(out_size: int, in_size: int) -> None:
    identity = torch.eye(in_size, dtype=torch.float64).unsqueeze(1)  # [in, 1, in]: one basis vector each
    reference = F.interpolate(identity, size=out_size, mode="linear", align_corners=False)[:, 0, :].T
    matrix = bilinear_matrix(out_size, in_size)
    assert matrix.shape == (out_size, in_size)
    np.testing.assert_allclose(matrix, reference.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)  # partition of unity


@pytest.mark.parametrize(("frame", "grid"), [((224, 224), (14, 14)), ((224, 224), (7, 7)), ((64, 64), (8, 8)),
                                             ((100, 64), (7, 8))])
def test_separable_matrices_equal_interpolate_2d(frame: tuple[int, int], grid: tuple[int, int]) -> None:
    heatmap = np.random.default_rng(3).normal(size=grid)
    reference = F.interpolate(torch.from_numpy(heatmap)[None, None], size=frame, mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    ours = bilinear_matrix(frame[0], grid[0]) @ heatmap @ bilinear_matrix(frame[1], grid[1]).T
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- exactness of the shortcut


def _upsample(heatmaps: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """Explicit bilinear upsampling of [..., gy, gx] to [..., Y, X] with torch (float64)."""
    flat = torch.from_numpy(heatmaps.reshape(-1, 1, *heatmaps.shape[-2:]))
    up = F.interpolate(flat, size=frame, mode="bilinear", align_corners=False)
    return up.numpy().reshape(*heatmaps.shape[:-2], *frame)


def _reference_rma(heatmaps: np.ndarray, masks: np.ndarray, normalization: str) -> np.ndarray:
    """Per sample and heatmap: upsample, optionally min-max normalise, sum(H * M) / sum(H)."""
    n, e, s = heatmaps.shape[:3]
    out = np.empty((n, e, s))
    for i in range(n):
        for j in range(e):
            for k in range(s):
                up = _upsample(heatmaps[i, j, k], masks.shape[1:])
                if normalization == "minmax":
                    up = (up - up.min()) / (up.max() - up.min())
                out[i, j, k] = (up * masks[i]).sum() / up.sum()
    return out


def _random_masks(rng: np.random.Generator, n: int, frame: tuple[int, int]) -> np.ndarray:
    """Random blobs: a rectangle plus scattered pixels, so masks are neither grid-aligned nor convex."""
    masks = rng.random((n, *frame)) < 0.15
    for mask in masks:
        y0, x0 = rng.integers(0, frame[0] // 2), rng.integers(0, frame[1] // 2)
        mask[y0 : y0 + rng.integers(3, frame[0] // 2), x0 : x0 + rng.integers(3, frame[1] // 2)] = True
    return masks


@pytest.mark.parametrize("normalization", ["none", "minmax"])
@pytest.mark.parametrize(("frame", "grid"), [((224, 224), (7, 7)), ((224, 224), (14, 14)), ((64, 64), (8, 8))])
def test_projection_equals_explicit_upsampling(frame: tuple[int, int], grid: tuple[int, int], normalization: str) -> None:
    rng = np.random.default_rng(sum(grid) + len(normalization))
    n, e, s = 3, 2, 3
    heatmaps = rng.random((n, e, s, *grid)) ** 3  # skewed, like attention relevance
    heatmaps[1, 0, 2] *= 1e-4  # a small-scale heatmap
    masks = _random_masks(rng, n, frame)
    projector = MaskProjector(frame=frame, grid=grid)
    rma, edge = relevance_mass_accuracy(heatmaps, projector.project(masks), masks.sum(axis=(1, 2)), projector,
                                        normalization)
    assert rma.shape == edge.shape == (n, e, s)
    assert (edge == EdgeCase.OK).all()
    reference = _reference_rma(heatmaps, masks, normalization)
    np.testing.assert_allclose(rma, reference, rtol=0, atol=1e-5)
    assert np.ptp(reference) > 0.05  # the samples differ, so a wrong pairing would show


@pytest.mark.parametrize(("frame", "grid"), [((224, 224), (7, 7)), ((224, 224), (14, 14)), ((64, 64), (8, 8)),
                                             ((100, 64), (7, 8))])
def test_upsampled_extremes_equal_explicit(frame: tuple[int, int], grid: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    heatmaps = rng.normal(size=(5, 2, *grid))
    heatmaps[0, 0] = np.linspace(0, 1, grid[0] * grid[1]).reshape(grid)  # extremes in the corners
    up = _upsample(heatmaps, frame)
    projector = MaskProjector(frame=frame, grid=grid)
    np.testing.assert_allclose(projector.upsampled_min(heatmaps), up.min(axis=(-2, -1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(projector.upsampled_max(heatmaps), up.max(axis=(-2, -1)), rtol=0, atol=1e-12)


def test_projector_ones_is_mass_of_upsampling() -> None:
    projector = MaskProjector(frame=(100, 64), grid=(7, 8))
    heatmap = np.random.default_rng(4).random((7, 8))
    assert (projector.ones * heatmap).sum() == pytest.approx(_upsample(heatmap, (100, 64)).sum(), rel=1e-12)


def test_unknown_normalization_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        ScoringOptions(normalization="bogus")
    projector = MaskProjector((64, 64), (8, 8))
    with pytest.raises(ValueError, match="normalization"):
        relevance_mass_accuracy(np.ones((1, 8, 8)), projector.project(np.ones((1, 64, 64), bool)), np.array([1]),
                                projector, "bogus")
    assert ScoringOptions().normalization == "minmax"
