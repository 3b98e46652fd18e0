"""Quadrants, PT, IR and accuracy from per-sample RMA, with the undefined-sample policies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rationality.schema import EdgeCase
from rationality.scoring.metrics import UNDEFINED_POLICIES, Outcome, outcome_codes, outcome_names, rationality_metrics

NAN = float("nan")
# sample:        0     1     2     3     4     5                      6                          7
RMA = np.array([0.9, 0.2, 0.5, 0.7, 0.1, NAN, NAN, 0.6], dtype=np.float32)
EDGE = np.array([0, 0, 0, 0, 0, EdgeCase.EMPTY_MASK, EdgeCase.ZERO_SUM_HEATMAP, 0], dtype=np.int8)
CORRECT = np.array([True, True, True, False, False, True, False, True])
# At threshold 0.5 the defined samples are: 0 RR, 1 RW, 2 RR (0.5 is valid), 3 WR, 4 WW, 7 RR;
# sample 5 is correct and undefined, sample 6 wrong and undefined.


@pytest.mark.parametrize(("policy", "quadrants", "pt", "ir", "excluded"), [
    ("invalid", (3, 2, 1, 2), 3 / 5, 3 / 4, 0),
    ("valid", (4, 1, 2, 1), 4 / 5, 4 / 6, 0),
    ("exclude", (3, 1, 1, 1), 3 / 4, 3 / 4, 2),
    # the official code: sample 5's empty mask is an RMA of 0 (RW), sample 6's NaN counts as valid (WR)
    ("paper_code", (3, 2, 2, 1), 3 / 5, 3 / 5, 0),
])
def test_undefined_policy_counts(policy: str, quadrants: tuple, pt: float, ir: float, excluded: int) -> None:
    m = rationality_metrics(RMA, EDGE, CORRECT, threshold=0.5, undefined=policy)
    assert (m.rr, m.rw, m.wr, m.ww) == quadrants
    assert m.pt == pytest.approx(pt)
    assert m.ir == pytest.approx(ir)
    assert m.accuracy == pytest.approx(5 / 8)  # accuracy is over every sample, whatever the policy
    assert (m.n, m.n_undefined, m.n_empty_mask, m.n_excluded) == (8, 2, 1, excluded)


def test_default_policy_is_invalid_and_threshold_half() -> None:
    assert rationality_metrics(RMA, EDGE, CORRECT) == rationality_metrics(RMA, EDGE, CORRECT, 0.5, "invalid")


@pytest.mark.parametrize("value", [0.5, 0.25, 0.75, 0.0, 1.0, 0.7, 0.1])
def test_threshold_boundary_counts_valid(value: float) -> None:
    """RMA equal to the threshold is valid, also where float32 cannot hold the threshold exactly (0.7)."""
    rma = np.array([value], dtype=np.float32)
    edge = np.zeros(1, dtype=np.int8)
    correct = np.array([True])
    at = rationality_metrics(rma, edge, correct, threshold=value)
    assert (at.rr, at.rw) == (1, 0)
    if value < 1.0:  # no threshold lies above 1
        above = rationality_metrics(rma, edge, correct, threshold=float(np.nextafter(np.float32(value), np.float32(2))))
        assert (above.rr, above.rw) == (0, 1)


def test_threshold_moves_samples_between_quadrants() -> None:
    m = rationality_metrics(RMA, EDGE, CORRECT, threshold=0.65)  # 2 (0.5) and 7 (0.6) turn invalid
    assert (m.rr, m.rw, m.wr, m.ww) == (1, 4, 1, 2)
    assert m.pt == pytest.approx(1 / 5)
    assert m.ir == pytest.approx(1 / 2)


def test_no_correct_prediction_gives_nan_pt() -> None:
    m = rationality_metrics(np.array([0.9, 0.1]), np.zeros(2, np.int8), np.array([False, False]))
    assert (m.rr, m.rw, m.wr, m.ww) == (0, 0, 1, 1)
    assert math.isnan(m.pt)
    assert m.ir == 0.0
    assert m.accuracy == 0.0


def test_no_valid_evidence_gives_nan_ir() -> None:
    m = rationality_metrics(np.array([0.1, 0.2, 0.3]), np.zeros(3, np.int8), np.array([True, False, True]))
    assert (m.rr, m.rw, m.wr, m.ww) == (0, 2, 0, 1)
    assert math.isnan(m.ir)
    assert m.pt == 0.0
    assert m.accuracy == pytest.approx(2 / 3)


def test_everything_excluded() -> None:
    m = rationality_metrics(np.array([NAN, NAN]), np.array([1, 3], np.int8), np.array([True, False]), undefined="exclude")
    assert (m.rr, m.rw, m.wr, m.ww, m.n_excluded, m.n_empty_mask) == (0, 0, 0, 0, 2, 1)
    assert math.isnan(m.pt) and math.isnan(m.ir)
    assert m.accuracy == 0.5


def test_empty_input_gives_nan_everywhere() -> None:
    m = rationality_metrics(np.array([]), np.array([], np.int8), np.array([], bool))
    assert m.n == 0
    assert math.isnan(m.accuracy) and math.isnan(m.pt) and math.isnan(m.ir)


def test_undefined_sample_ignores_its_rma_value() -> None:
    """The policy, not a stale value in ``rma``, decides an undefined sample."""
    rma = np.array([0.9, 0.9])
    edge = np.array([EdgeCase.NON_FINITE_HEATMAP, EdgeCase.OK], dtype=np.int8)
    m = rationality_metrics(rma, edge, np.array([True, True]), undefined="invalid")
    assert (m.rr, m.rw, m.n_undefined, m.n_empty_mask) == (1, 1, 1, 0)


def test_to_dict() -> None:
    d = rationality_metrics(RMA, EDGE, CORRECT).to_dict()
    assert set(d) == {"accuracy", "pt", "ir", "rr", "rw", "wr", "ww", "n", "n_undefined", "n_empty_mask", "n_excluded"}
    assert d["rr"] == 3


def test_bad_policy() -> None:
    with pytest.raises(ValueError, match="undefined policy"):
        rationality_metrics(RMA, EDGE, CORRECT, undefined="ignore")


@pytest.mark.parametrize(("rma", "edge", "correct"), [
    (RMA[:-1], EDGE, CORRECT),
    (RMA, EDGE[:-1], CORRECT),
    (RMA, EDGE, CORRECT[:-1]),
    (RMA.reshape(2, 4), EDGE.reshape(2, 4), CORRECT.reshape(2, 4)),
])
def test_shape_mismatch(rma: np.ndarray, edge: np.ndarray, correct: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\[n\]"):
        rationality_metrics(rma, edge, correct)


def _reference_outcome(rma: float, edge: int, correct: bool, threshold: float, policy: str) -> str:
    """One sample's quadrant, written out case by case."""
    if edge != EdgeCase.OK:
        if policy == "exclude":
            return "EXCLUDED_RIGHT" if correct else "EXCLUDED_WRONG"
        if policy == "paper_code":
            valid = edge != EdgeCase.EMPTY_MASK or 0.0 >= threshold
        else:
            valid = policy == "valid"
    else:
        valid = rma >= np.float32(threshold)
    return ("R" if correct else "W") + ("R" if valid else "W")


@pytest.mark.parametrize("policy", UNDEFINED_POLICIES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_outcome_codes_equal_a_per_sample_reference(policy: str, threshold: float) -> None:
    rng = np.random.default_rng(3)
    rma = np.round(rng.uniform(0, 1, 200), 1).astype(np.float32)  # many values exactly at a threshold
    edge = rng.choice([EdgeCase.OK, EdgeCase.EMPTY_MASK, EdgeCase.ZERO_SUM_HEATMAP], p=[0.8, 0.1, 0.1], size=200)
    edge = edge.astype(np.int8)
    rma[edge != EdgeCase.OK] = np.nan
    correct = rng.uniform(size=200) < 0.6
    codes = outcome_codes(rma, edge, correct, threshold, policy)
    expected = [_reference_outcome(*sample, threshold, policy) for sample in zip(rma, edge, correct)]
    assert [Outcome(code).name for code in codes] == expected
    names = outcome_names(codes)
    assert all(name == (e if e[0] != "E" else "excluded") for name, e in zip(names, expected))


def test_outcome_codes_broadcast_correct_over_columns() -> None:
    rma = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)  # [sample, column]
    codes = outcome_codes(rma, np.zeros((2, 2), np.int8), np.array([True, False]), 0.5)
    np.testing.assert_array_equal(codes, [[Outcome.RR, Outcome.RW], [Outcome.WR, Outcome.WW]])


def _official_code_valid(heatmap: np.ndarray, mask: np.ndarray, threshold: float, minmax: bool) -> bool:
    """Validity as the paper's official code decides it, in float arithmetic: upsample, optionally
    min-max normalise (0 / 0 gives NaN), RMA = sum(H * M) / sum(H), invalid only if RMA < threshold
    (so NaN passes)."""
    import torch

    up = torch.nn.functional.interpolate(torch.tensor(heatmap, dtype=torch.float64)[None, None], size=mask.shape,
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    if np.isfinite(heatmap).all() and np.ptp(heatmap) == 0:  # in exact arithmetic a constant map upsamples to itself (torch leaves ulps)
        up = np.full(mask.shape, heatmap.flat[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        if minmax:
            up = (up - up.min()) / (up.max() - up.min())
        rma = (up * mask).sum() / up.sum()
    return not rma < threshold


@pytest.mark.parametrize("minmax", [True, False], ids=["minmax", "none"])
def test_paper_code_policy_reproduces_the_official_code_on_edge_cases(minmax: bool) -> None:
    from rationality.scoring.rma import MaskProjector, relevance_mass_accuracy

    rng = np.random.default_rng(0)
    mask = np.zeros((28, 28), dtype=bool)
    mask[4:20, 6:22] = True
    empty = np.zeros_like(mask)
    peaked = rng.random((4, 4))
    cases = [(peaked, mask), (np.full((4, 4), 0.5), mask), (np.zeros((4, 4)), mask),
             (np.where(np.eye(4, dtype=bool), np.nan, peaked), mask), (np.full((4, 4), np.inf), mask),
             (peaked, empty), (1.0 - peaked, mask)]
    projector = MaskProjector(frame=(28, 28), grid=(4, 4))
    heatmaps = np.stack([h for h, _ in cases])
    masks = np.stack([m for _, m in cases])
    rma, edge = relevance_mass_accuracy(heatmaps, projector.project(masks), masks.sum(axis=(1, 2)), projector,
                                        "minmax" if minmax else "none")
    assert (edge != EdgeCase.OK).sum() == (5 if minmax else 4)  # constant (minmax), zero, NaN, inf, empty
    correct = np.ones(len(cases), dtype=bool)
    for threshold in (0.0, 0.3, 0.5, 0.9):
        codes = outcome_codes(rma, edge, correct, threshold, "paper_code")
        expected = [_official_code_valid(h, m, threshold, minmax) for h, m in cases]
        assert [code == Outcome.RR for code in codes] == expected, threshold


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -0.1, 1.5])
def test_a_threshold_outside_zero_one_is_refused(threshold: float) -> None:
    """NaN once counted every sample as invalid evidence (PT 0) without a word."""
    with pytest.raises(ValueError, match="threshold must be a finite number in \\[0, 1\\]"):
        rationality_metrics(np.array([0.7]), np.array([0]), np.array([True]), threshold)
