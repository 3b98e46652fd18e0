"""From per-sample RMA to valid evidence, quadrants, PT, IR and accuracy (pure numpy kernels).

* valid evidence: RMA >= threshold;
* quadrants: RR (correct, valid), RW (correct, invalid), WR (wrong, valid), WW (wrong, invalid);
* Prediction Trustworthiness PT = RR / (RR + RW): of the correct predictions, the share on valid evidence;
* Inference Reliability IR = RR / (RR + WR): of the samples with valid evidence, the share predicted right;
* accuracy over all samples.

Samples whose RMA is undefined (:class:`~rationality.schema.EdgeCase`) follow an explicit policy:
``invalid`` (default) counts them as invalid evidence, ``valid`` as valid evidence (what the paper's
code did with NaN, by accident), ``exclude`` leaves them out of the quadrants. They are always counted.
Undefined ratios (0/0) are NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from rationality.schema import EdgeCase

UndefinedPolicy = Literal["invalid", "valid", "exclude"]
UNDEFINED_POLICIES: tuple[str, ...] = ("invalid", "valid", "exclude")
DEFAULT_THRESHOLD = 0.5


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


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def rationality_metrics(
    rma: np.ndarray, edge_case: np.ndarray, correct: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid",
) -> RationalityMetrics:
    """Quadrants, PT, IR and accuracy for one set of samples.

    Args:
        rma: [n] float, NaN where undefined.
        edge_case: [n] int, :class:`EdgeCase` codes (non-zero where RMA is undefined).
        correct: [n] bool, prediction == label.
        threshold: RMA at or above which evidence is valid.
        undefined: policy for samples with undefined RMA.
    """
    if undefined not in UNDEFINED_POLICIES:
        raise ValueError(f"undefined policy must be one of {UNDEFINED_POLICIES}, got {undefined!r}")
    rma, edge_case, correct = np.asarray(rma), np.asarray(edge_case), np.asarray(correct, dtype=bool)
    if not (rma.shape == edge_case.shape == correct.shape and rma.ndim == 1):
        raise ValueError(f"rma, edge_case and correct must be [n], got {rma.shape}, {edge_case.shape}, {correct.shape}")
    undefined_mask = edge_case != EdgeCase.OK
    # Compare in RMA's own precision: a float32 RMA of 0.7 is valid at threshold 0.7.
    with np.errstate(invalid="ignore"):
        valid = np.where(undefined_mask, undefined == "valid", rma >= np.asarray(threshold, dtype=rma.dtype))
    included = ~undefined_mask if undefined == "exclude" else np.ones_like(correct)
    rr = int(np.sum(included & correct & valid))
    rw = int(np.sum(included & correct & ~valid))
    wr = int(np.sum(included & ~correct & valid))
    ww = int(np.sum(included & ~correct & ~valid))
    return RationalityMetrics(
        accuracy=_ratio(int(correct.sum()), len(correct)), pt=_ratio(rr, rr + rw), ir=_ratio(rr, rr + wr),
        rr=rr, rw=rw, wr=wr, ww=ww, n=len(correct), n_undefined=int(undefined_mask.sum()),
        n_empty_mask=int(np.sum(edge_case == EdgeCase.EMPTY_MASK)), n_excluded=int(np.sum(~included)),
    )
