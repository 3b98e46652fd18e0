"""From per-sample RMA (or another localisation score) to valid evidence, quadrants, PT, IR and accuracy
(pure numpy kernels).

* valid evidence: RMA >= threshold (for a localisation metric whose direction is ``lower``, score <=
  threshold; see :mod:`rationality.scoring.localisation`);
* quadrants: RR (correct, valid), RW (correct, invalid), WR (wrong, valid), WW (wrong, invalid);
* Prediction Trustworthiness PT = RR / (RR + RW): of the correct predictions, the share on valid evidence;
* Inference Reliability IR = RR / (RR + WR): of the samples with valid evidence, the share predicted right;
* accuracy over all samples.

Samples whose RMA is undefined (:class:`~rationality.schema.EdgeCase`) follow an explicit policy:
``invalid`` (default) counts them as invalid evidence, ``valid`` as valid evidence, ``exclude`` leaves
them out of the quadrants, and ``paper_code`` does what the paper's official code does: its RMA is
NaN for a zero-sum, constant (under min-max) or non-finite heatmap, and NaN passed its validity test,
so those count as valid; an empty mask gives sum(H ⊙ M) = 0, an RMA of 0, compared with the threshold
like any RMA (invalid unless the threshold is 0). A sample with both an empty mask and a degenerate
heatmap is stored as an empty mask (the code checked first), so ``paper_code`` scores it 0, where
the official code's 0 / 0 would have been NaN and valid. They are always counted. Undefined ratios
(0/0) are NaN.

:func:`outcome_codes` applies these rules per sample (a quadrant code each, for bootstrap resamples
and galleries); :func:`rationality_metrics` counts its codes, so the two cannot disagree.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from rationality.schema import EdgeCase

UndefinedPolicy = Literal["invalid", "valid", "exclude", "paper_code"]
UNDEFINED_POLICIES: tuple[str, ...] = ("invalid", "valid", "exclude", "paper_code")
DEFAULT_THRESHOLD = 0.5
Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class RationalityMetrics:
    """Counts and ratios of one (model, dataset, method, explainer, start layer)."""

    accuracy: float
    pt: float
    ir: float
    rr: int
    rw: int
    wr: int
    ww: int
    n: int
    n_undefined: int
    n_empty_mask: int
    n_excluded: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Outcome(enum.IntEnum):
    """A sample's quadrant; the two ``EXCLUDED_*`` codes are samples left out under ``exclude``."""

    RR = 0  # correct prediction, valid evidence
    RW = 1  # correct prediction, invalid evidence
    WR = 2  # wrong prediction, valid evidence
    WW = 3  # wrong prediction, invalid evidence
    EXCLUDED_RIGHT = 4  # correct prediction, undefined RMA, excluded from the quadrants
    EXCLUDED_WRONG = 5  # wrong prediction, undefined RMA, excluded from the quadrants


def check_threshold(threshold: float, bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """``threshold`` if it is a finite number within ``bounds`` (RMA's: [0, 1]); ValueError otherwise (NaN
    would pass no sample)."""
    low, high = bounds
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
            math.isfinite(threshold) and low <= threshold <= high):
        raise ValueError(f"threshold must be a finite number in [{low:g}, {high:g}], got {threshold!r}")
    return float(threshold)


def outcome_codes(rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray, threshold: float,
                  undefined: UndefinedPolicy = "invalid", direction: Direction = "higher",
                  bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Per-sample :class:`Outcome` codes.

    Args:
        rma: [n, ...] float, NaN where undefined.
        edge_case: [n, ...] int, :class:`EdgeCase` codes (non-zero where RMA is undefined).
        correct: [n] bool, broadcast over the trailing dims of ``rma``.
        threshold: RMA at or above which evidence is valid, in [0, 1].
        undefined: policy for samples with undefined RMA (``invalid``, ``valid``, ``exclude``,
            ``paper_code``; see the module docstring).
        direction: ``higher``: valid at ``rma >= threshold``; ``lower``: at ``rma <= threshold``.
        bounds: the thresholds the metric allows (RMA's: [0, 1]; see
            :func:`~rationality.scoring.localisation.evidence_rule`).

    Returns:
        int8 [n, ...], the shape of ``rma``.

    Raises:
        ValueError: for a threshold outside ``bounds`` or not finite, or an unknown policy.
    """
    check_threshold(threshold, bounds)
    if undefined not in UNDEFINED_POLICIES:
        raise ValueError(f"undefined policy must be one of {UNDEFINED_POLICIES}, got {undefined!r}")
    rma, edge_case = np.asarray(rma), np.asarray(edge_case)
    correct = np.asarray(correct, dtype=bool).reshape((-1,) + (1,) * (rma.ndim - 1))
    undefined_mask = edge_case != EdgeCase.OK
    # Compare in RMA's own precision: a float32 RMA of 0.7 is valid at threshold 0.7.
    threshold = np.asarray(threshold, dtype=rma.dtype)
    if direction == "lower":  # valid at rma <= threshold: the same test on negated values
        rma, threshold = -rma, -threshold
    if undefined == "paper_code":  # NaN counts as valid evidence; an empty mask is an RMA of 0
        undefined_valid = np.where(edge_case == EdgeCase.EMPTY_MASK, threshold <= 0, True)
    else:
        undefined_valid = np.full(rma.shape, undefined == "valid")
    with np.errstate(invalid="ignore"):
        valid = np.where(undefined_mask, undefined_valid, rma >= threshold)
    codes = np.where(correct, np.where(valid, Outcome.RR, Outcome.RW), np.where(valid, Outcome.WR, Outcome.WW))
    if undefined == "exclude":
        codes = np.where(undefined_mask, np.where(correct, Outcome.EXCLUDED_RIGHT, Outcome.EXCLUDED_WRONG), codes)
    return codes.astype(np.int8)


def outcome_names(codes: np.ndarray) -> np.ndarray:
    """``"RR"``, ``"RW"``, ``"WR"``, ``"WW"`` or ``"excluded"`` per code: object array, the shape of ``codes``."""
    names = np.array([o.name if o <= Outcome.WW else "excluded" for o in Outcome], dtype=object)
    return names[np.asarray(codes)]


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def rationality_metrics(
    rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid", direction: Direction = "higher",
    bounds: tuple[float, float] = (0.0, 1.0),
) -> RationalityMetrics:
    """Quadrants, PT, IR and accuracy for one set of samples.

    Args:
        rma: [n] float, NaN where undefined.
        edge_case: [n] int, :class:`EdgeCase` codes (non-zero where RMA is undefined).
        correct: [n] bool, prediction == label.
        threshold: RMA at or above which evidence is valid.
        undefined: policy for samples with undefined RMA.
        direction, bounds: see :func:`outcome_codes`.
    """
    rma, edge_case, correct = np.asarray(rma), np.asarray(edge_case), np.asarray(correct, dtype=bool)
    if not (rma.shape == edge_case.shape == correct.shape and rma.ndim == 1):
        raise ValueError(f"rma, edge_case and correct must be [n], got {rma.shape}, {edge_case.shape}, {correct.shape}")
    counts = np.bincount(outcome_codes(rma, edge_case, correct, threshold, undefined, direction, bounds),
                         minlength=len(Outcome))
    rr, rw, wr, ww = (int(counts[outcome]) for outcome in (Outcome.RR, Outcome.RW, Outcome.WR, Outcome.WW))
    return RationalityMetrics(
        accuracy=_ratio(int(correct.sum()), len(correct)), pt=_ratio(rr, rr + rw), ir=_ratio(rr, rr + wr),
        rr=rr, rw=rw, wr=wr, ww=ww, n=len(correct), n_undefined=int(np.sum(edge_case != EdgeCase.OK)),
        n_empty_mask=int(np.sum(edge_case == EdgeCase.EMPTY_MASK)),
        n_excluded=int(counts[Outcome.EXCLUDED_RIGHT] + counts[Outcome.EXCLUDED_WRONG]),
    )
