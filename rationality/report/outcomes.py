"""Each sample's quadrant as a code, for resampling and for picking samples to show.

The same rules as :func:`rationality.scoring.metrics.rationality_metrics` (valid evidence is
RMA >= threshold compared in RMA's precision; undefined RMA follows the policy), but per sample,
so that bootstrap resamples and galleries need no second pass over the metric code. A test checks
that summing the codes gives exactly the counts of ``rationality_metrics`` for every policy.
"""

from __future__ import annotations

import enum

import numpy as np

from rationality.schema import EdgeCase
from rationality.scoring.metrics import UNDEFINED_POLICIES, UndefinedPolicy


class Outcome(enum.IntEnum):
    """A sample's quadrant; the two ``EXCLUDED_*`` codes are samples left out under ``exclude``."""

    RR = 0  # correct prediction, valid evidence
    RW = 1  # correct prediction, invalid evidence
    WR = 2  # wrong prediction, valid evidence
    WW = 3  # wrong prediction, invalid evidence
    EXCLUDED_RIGHT = 4  # correct prediction, undefined RMA, excluded from the quadrants
    EXCLUDED_WRONG = 5  # wrong prediction, undefined RMA, excluded from the quadrants


def outcome_codes(rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray, threshold: float,
                  undefined: UndefinedPolicy = "invalid") -> np.ndarray:
    """Per-sample :class:`Outcome` codes.

    Args:
        rma: [n, ...] float, NaN where undefined.
        edge_case: [n, ...] int, :class:`~rationality.schema.EdgeCase` codes.
        correct: [n] bool, broadcast over the trailing dims of ``rma``.
        threshold: RMA at or above which evidence is valid.
        undefined: policy for samples with undefined RMA (``invalid``, ``valid``, ``exclude``).

    Returns:
        int8 [n, ...], the shape of ``rma``.
    """
    if undefined not in UNDEFINED_POLICIES:
        raise ValueError(f"undefined policy must be one of {UNDEFINED_POLICIES}, got {undefined!r}")
    rma, edge_case = np.asarray(rma), np.asarray(edge_case)
    correct = np.asarray(correct, dtype=bool).reshape((-1,) + (1,) * (rma.ndim - 1))
    undefined_mask = edge_case != EdgeCase.OK
    with np.errstate(invalid="ignore"):
        valid = np.where(undefined_mask, undefined == "valid", rma >= np.asarray(threshold, dtype=rma.dtype))
    codes = np.where(correct, np.where(valid, Outcome.RR, Outcome.RW), np.where(valid, Outcome.WR, Outcome.WW))
    if undefined == "exclude":
        codes = np.where(undefined_mask, np.where(correct, Outcome.EXCLUDED_RIGHT, Outcome.EXCLUDED_WRONG), codes)
    return codes.astype(np.int8)


def outcome_names(codes: np.ndarray) -> np.ndarray:
    """``"RR"``, ``"RW"``, ``"WR"``, ``"WW"`` or ``"excluded"`` per code: object array, the shape of ``codes``."""
    names = np.array([o.name if o <= Outcome.WW else "excluded" for o in Outcome], dtype=object)
    return names[np.asarray(codes)]
