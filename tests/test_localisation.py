"""Localisation metrics: each equals Quantus' implementation on the same heatmaps and masks, analytic
cases with known answers, edge cases, and the registry's contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rationality.errors import ConfigError, StoreError
from rationality.schema import EdgeCase
from rationality.scoring.localisation import HeatmapBatch, create_metric, list_metrics, metric_class
from rationality.scoring.rma import MaskProjector

#: (frame side, grid side): upsampling factors 8 and 12.
GEOMETRIES = [(64, 8), (48, 4)]


def make_batch(heatmaps: np.ndarray, masks: np.ndarray, with_pixels: bool = True) -> HeatmapBatch:
    """A batch of heatmaps [n, K, gy, gx] against masks [n, Y, X] (one per sample)."""
    projector = MaskProjector(frame=masks.shape[1:], grid=heatmaps.shape[-2:])
    boxes, box_areas = projector.project_boxes(masks)
    return HeatmapBatch(heatmaps, projector, projector.project(masks), masks.sum(axis=(1, 2)), boxes, box_areas,
                        masks if with_pixels else None)


def score(name: str, heatmaps: np.ndarray, masks: np.ndarray, normalization: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """One metric's scores and edge cases [n, K]."""
    return create_metric(name).score(make_batch(heatmaps, masks), normalization)


def upsample(heatmaps: np.ndarray, frame: int) -> np.ndarray:
    """Heatmaps [n, gy, gx] -> [n, 1, frame, frame] float32, as the paper's code upsamples them."""
    tensor = torch.from_numpy(np.asarray(heatmaps, dtype=np.float32))[:, None]
    return F.interpolate(tensor, size=(frame, frame), mode="bilinear", align_corners=False).numpy()


def minmax(frames: np.ndarray) -> np.ndarray:
    low = frames.min(axis=(-2, -1), keepdims=True)
    return (frames - low) / (frames.max(axis=(-2, -1), keepdims=True) - low)


def block_masks(rng: np.random.Generator, n: int, frame: int, grid: int) -> np.ndarray:
    """Random blobs and rectangles made of (factor / 2)-pixel blocks: a clamped border run of equal
    upsampled pixels (factor / 2 wide) lies wholly on or off the object, so an order among tied pixels
    cannot change a rank metric and ours must equal Quantus exactly."""
    block = frame // grid // 2
    cells = frame // block
    masks = np.zeros((n, cells, cells), dtype=bool)
    for i, mask in enumerate(masks):
        if i % 2:
            y, x = rng.integers(0, cells // 2, size=2)
            h, w = rng.integers(2, cells // 2 + 1, size=2)
            mask[y:y + h, x:x + w] = True
        else:
            noise = rng.random((cells, cells))
            mask[:] = noise > np.quantile(noise, rng.uniform(0.5, 0.9))
    return masks.repeat(block, axis=1).repeat(block, axis=2)


def random_heatmaps(rng: np.random.Generator, n: int, grid: int) -> np.ndarray:
    """[n, 1, grid, grid] positive random heatmaps, some peaked, some with a border maximum."""
    heatmaps = rng.random((n, grid, grid)) ** 3
    heatmaps[::3, 0, rng.integers(0, grid)] = 2.0  # a maximum on the clamped border
    heatmaps[1::3, rng.integers(1, grid - 1), rng.integers(1, grid - 1)] = 3.0  # an interior peak
    return heatmaps[:, None]


def quantus_scores(metric_class_name: str, frames: np.ndarray, masks: np.ndarray, **options) -> np.ndarray:
    """Quantus' metric as users call it (no model), on frames [n, 1, Y, X] and masks [n, Y, X]."""
    quantus = pytest.importorskip("quantus", reason="Quantus is a test dependency (pip install -e '.[test]')")
    metric = getattr(quantus, metric_class_name)(disable_warnings=True, normalise=False, abs=False, **options)
    x_batch = np.zeros((len(frames), 3, *frames.shape[-2:]), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=None, x_batch=x_batch, y_batch=np.zeros(len(frames), dtype=int), a_batch=frames,
                        s_batch=masks[:, None].astype(np.float32), channel_first=True, explain_func=None,
                        explain_func_kwargs=None, model_predict_kwargs=None, softmax=False)
    return np.asarray(scores, dtype=np.float64)


@pytest.fixture(params=GEOMETRIES, ids=lambda g: f"{g[0]}px-grid{g[1]}")
def sample_set(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmaps [n, 1, g, g], masks [n, Y, Y], their frames [n, 1, Y, Y] upsampled as the paper's code)."""
    frame, grid = request.param
    rng = np.random.default_rng(frame)
    heatmaps = random_heatmaps(rng, 24, grid)
    return heatmaps, block_masks(rng, 24, frame, grid), upsample(heatmaps[:, 0], frame)


# --------------------------------------------------------------------------- equal to Quantus


@pytest.mark.parametrize("normalization", ["minmax", "none"])
def test_rma_equals_quantus(sample_set, normalization: str) -> None:
    heatmaps, masks, frames = sample_set
    ours, edge = score("rma", heatmaps, masks, normalization)
    reference = quantus_scores("RelevanceMassAccuracy", minmax(frames) if normalization == "minmax" else frames, masks)
    assert (edge == EdgeCase.OK).all()
    np.testing.assert_allclose(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


def test_energy_pointing_game_equals_quantus_rma_on_the_boxes(sample_set) -> None:
    """Quantus has no energy pointing game; it is RMA against the object's bounding box (Score-CAM)."""
    heatmaps, masks, frames = sample_set
    boxes = np.zeros_like(masks)
    for box, mask in zip(boxes, masks):
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1] = True
    ours, _ = score("energy_pointing_game", heatmaps, masks)
    np.testing.assert_allclose(ours[:, 0], quantus_scores("RelevanceMassAccuracy", minmax(frames), boxes),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours, score("rma", heatmaps, masks)[0])  # the blobs are not their boxes


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_attribution_localisation_equals_quantus_positive_share(sample_set, shift: float) -> None:
    """Quantus gives the positive-relevance share mu; ours is mu over the object's area share. A shift
    makes heatmaps signed: without normalisation their positive part is taken on the frame."""
    heatmaps, masks, frames = sample_set
    heatmaps, frames = heatmaps - shift, frames - shift
    ours, edge = score("attribution_localisation", heatmaps, masks, "none")
    mu = quantus_scores("AttributionLocalisation", frames, masks, positive_attributions=True)
    area_share = masks.sum(axis=(1, 2)) / masks[0].size
    assert (edge == EdgeCase.OK).all()
    np.testing.assert_allclose(ours[:, 0] * area_share, mu, rtol=1e-5, atol=1e-7)


def test_pointing_game_equals_quantus(sample_set) -> None:
    """Including the ways a maximum is shared by several pixels: two corner tokens at the maximum (each
    upsamples to a clamped corner block), with only the second corner on the object; a 2x2 block of
    maximal tokens, whose cell is flat, with the object inside the cell only; a maximum on the top border,
    whose clamped rows repeat it, with the object below the first row only."""
    heatmaps, masks, frames = sample_set
    heatmaps, masks = heatmaps.copy(), masks.copy()
    grid, frame = heatmaps.shape[-1], masks.shape[-1]
    factor, half = frame // grid, frame // grid // 2
    heatmaps[2, 0, 0, 0] = heatmaps[2, 0, -1, -1] = 5.0
    masks[2] = False
    masks[2, -half:, -half:] = True
    heatmaps[5, 0, 2:4, 1:3] = 5.0
    masks[5] = False
    masks[5, 2 * factor + half + 1:3 * factor + half - 1, factor + half + 1:2 * factor + half - 1] = True
    heatmaps[8, 0, 0, 1] = 5.0  # a top-border maximum: rows 0..half-1 repeat row 0; the object misses row 0
    masks[8] = False
    masks[8, 1:half, factor + half - 1:factor + half + 1] = True
    frames = upsample(heatmaps[:, 0], frame)
    ours, edge = score("pointing_game", heatmaps, masks)
    reference = quantus_scores("PointingGame", frames, masks)
    assert (edge == EdgeCase.OK).all() and set(np.unique(ours)) == {0.0, 1.0}
    assert ours[2, 0] == ours[5, 0] == ours[8, 0] == 1.0
    np.testing.assert_array_equal(ours[:, 0], reference)


@pytest.mark.parametrize(("name", "quantus_name", "options"), [
    ("top_k_intersection", "TopKIntersection", {"k": 1000}),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}),
    ("auc", "AUC", {}),
])
def test_rank_metrics_equal_quantus(sample_set, name: str, quantus_name: str, options: dict) -> None:
    heatmaps, masks, frames = sample_set
    for normalization in ("minmax", "none"):  # rank metrics ignore the normalisation
        ours, edge = score(name, heatmaps, masks, normalization)
        assert (edge == EdgeCase.OK).all()
        np.testing.assert_allclose(ours[:, 0], quantus_scores(quantus_name, frames, masks, **options), rtol=1e-7,
                                   atol=1e-9)


# --------------------------------------------------------------------------- analytic cases


def half_frame_case(frame: int = 64, grid: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A heatmap that is 1 on the left half of the grid and 0 on the right; the mask is the left half."""
    heatmap = np.zeros((1, 1, grid, grid))
    heatmap[..., : grid // 2] = 1.0
    mask = np.zeros((1, frame, frame), dtype=bool)
    mask[:, :, : frame // 2] = True
    return heatmap, mask


def test_analytic_scores_of_a_left_half_heatmap() -> None:
    """Known answers: the upsampled step is 1 left of the centre cell, 0 right of it, linear in between,
    so the mask (the left half) ranks every object pixel at or above every background pixel."""
    heatmap, mask = half_frame_case()
    (pg,), _ = score("pointing_game", heatmap, mask)
    assert pg[0] == 1.0
    (auc,), _ = score("auc", heatmap, mask)
    assert auc[0] == pytest.approx(1.0)  # no background pixel outranks an object pixel
    (rra,), _ = score("relevance_rank_accuracy", heatmap, mask)
    assert rra[0] == pytest.approx(1.0)
    (rma,), _ = score("rma", heatmap, mask, "none")
    # Mass: columns 0..27 hold 1, columns 28..35 ramp 15/16 .. 1/16 (sum 4), the rest 0: (28 + 4) * 64 in
    # all, of which columns 28..31 (15+13+11+9)/16 = 3 lie in the mask.
    assert rma[0] == pytest.approx((28 + 3) / (28 + 4), abs=1e-7)
    (al,), _ = score("attribution_localisation", heatmap, mask, "none")
    assert al[0] == pytest.approx(2 * (28 + 3) / (28 + 4), abs=1e-6)


def test_tied_pixels_share_the_remaining_places_in_proportion() -> None:
    """One token of 1 on a zero grid: its bilinear footprint (rows and columns 20..35 of the 64 px frame,
    256 pixels) is positive, every other pixel exactly 0, all tied. The mask is the top half: 192 of the
    footprint's pixels and 1,856 of the 3,840 zeros. The places left after the footprint go to the tied
    zeros, the object's share of them in proportion."""
    heatmaps = np.zeros((2, 1, 8, 8))
    heatmaps[:, 0, 3, 3] = 1.0
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[0, :32] = True
    masks[1, :16] = True  # rows 0..15 miss the footprint: 1,024 of the zeros
    (top_k, _), _ = score("top_k_intersection", heatmaps, masks)
    assert top_k == pytest.approx((192 + (1000 - 256) * 1856 / 3840) / 1000)
    rank, _ = score("relevance_rank_accuracy", heatmaps, masks)  # k = |M|: 2,048 and 1,024 pixels
    np.testing.assert_allclose(rank[:, 0], [(192 + (2048 - 256) * 1856 / 3840) / 2048,
                                            (1024 - 256) * 1024 / 3840 / 1024])


@pytest.mark.parametrize("name", ["rma", "energy_pointing_game", "attribution_localisation", "pointing_game",
                                  "top_k_intersection", "relevance_rank_accuracy", "auc"])
def test_edge_cases(name: str) -> None:
    """Per heatmap: non-finite, empty mask, constant heatmap (undefined under every metric: no evidence)."""
    rng = np.random.default_rng(0)
    heatmaps = rng.random((3, 2, 8, 8))
    heatmaps[0, 1, 3, 3] = np.nan
    heatmaps[2, 0] = 0.5
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[0, 8:40, 8:40] = masks[2, :32] = True  # sample 1 has an empty mask
    values, edge = score(name, heatmaps, masks)
    expected = [[EdgeCase.OK, EdgeCase.NON_FINITE_HEATMAP], [EdgeCase.EMPTY_MASK] * 2,
                [EdgeCase.ZERO_SUM_HEATMAP, EdgeCase.OK]]
    np.testing.assert_array_equal(edge, expected)
    assert np.isnan(values[edge != EdgeCase.OK]).all() and np.isfinite(values[edge == EdgeCase.OK]).all()


def test_auc_of_a_full_mask_is_undefined() -> None:
    heatmaps = np.random.default_rng(0).random((1, 1, 8, 8))
    values, edge = score("auc", heatmaps, np.ones((1, 64, 64), dtype=bool))
    assert edge[0, 0] == EdgeCase.FULL_MASK and np.isnan(values[0, 0])


def test_box_projection_equals_the_projection_of_the_box() -> None:
    rng = np.random.default_rng(1)
    masks = block_masks(rng, 6, 48, 4)
    masks[3] = False
    projector = MaskProjector(frame=(48, 48), grid=(4, 4))
    boxes = np.zeros_like(masks)
    for box, mask in zip(boxes, masks):
        if mask.any():
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1] = True
    projected, areas = projector.project_boxes(masks)
    np.testing.assert_allclose(projected, projector.project(boxes), atol=1e-4)
    np.testing.assert_array_equal(areas, boxes.sum(axis=(1, 2)))


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list_metrics())
def test_every_metric_declares_its_data(name: str) -> None:
    cls = metric_class(name)
    assert cls.name == name and cls.title and cls.reference and cls.valid_rule
    assert cls.direction in ("higher", "lower")
    assert cls.default_threshold in cls.thresholds


@pytest.mark.parametrize("name", list_metrics())
def test_every_metric_scores_a_random_batch_in_its_range(name: str) -> None:
    rng = np.random.default_rng(3)
    masks = block_masks(rng, 8, 64, 8)
    values, edge = score(name, rng.random((8, 3, 8, 8)), masks)
    assert values.shape == edge.shape == (8, 3) and (edge == EdgeCase.OK).all()
    upper = masks[0].size / masks.sum(axis=(1, 2))[:, None] if name == "attribution_localisation" else 1.0
    assert ((values >= 0) & (values <= upper + 1e-9)).all()


def test_builtins_are_registered() -> None:
    assert set(list_metrics()) >= {"rma", "energy_pointing_game", "attribution_localisation", "pointing_game",
                                   "top_k_intersection", "relevance_rank_accuracy", "auc"}


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown localisation metric 'pointing'.*pointing_game"):
        create_metric("pointing")


def test_pixel_metrics_need_the_masks() -> None:
    heatmaps = np.random.default_rng(0).random((2, 1, 8, 8))
    batch = make_batch(heatmaps, block_masks(np.random.default_rng(0), 2, 64, 8), with_pixels=False)
    create_metric("rma").score(batch, "minmax")  # projections suffice
    with pytest.raises(StoreError, match="pointing_game reads the masks' pixels"):
        create_metric("pointing_game").score(batch, "minmax")


def test_top_k_needs_k_pixels() -> None:
    with pytest.raises(ConfigError, match="top 1000 pixels.*16x16 holds only 256"):
        create_metric("top_k_intersection").check_frame((16, 16))


def test_list_metrics_shows_every_registered_metric(capsys: pytest.CaptureFixture) -> None:
    from rationality.cli import main

    assert main(["list", "metrics"]) == 0
    shown = capsys.readouterr().out
    assert [line for line in shown.splitlines() if not line.startswith(" ")] == list_metrics()
    assert "valid evidence:    a hit: the most relevant pixel lies on the object" in shown
    assert "claims grid:       0.3, 0.4, 0.5, 0.6, 0.7" in shown
