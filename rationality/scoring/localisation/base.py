"""The localisation-metric contract, its registry, and what every metric reads for a chunk of samples.

A localisation metric scores how well a heatmap H [gy, gx] (token grid) falls on its sample's object
mask M [Y, X] (model-input frame), after the bilinear upsampling up(H) of
:mod:`rationality.scoring.rma` (``align_corners=False``). Each metric is one class with its name, its
direction, its rule for valid evidence (``score >= threshold`` for ``higher`` metrics) and its default
threshold as data; PT and IR exist per metric. Metrics that are linear in up(H) are computed exactly on
the token grid through mask projections; the others on the upsampled frame, a few heatmaps at a time
(see :class:`HeatmapBatch`). No metric runs a model.

Adding a metric is one new module that subclasses :class:`LocalisationMetric`, decorates it with
:func:`register_metric`, and is imported in :mod:`rationality.scoring.localisation._metrics`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Iterator, Literal, Mapping

import numpy as np

from rationality._registry import Registry
from rationality.errors import StoreError
from rationality.schema import EdgeCase
from rationality.scoring.rma import MaskProjector, Normalization

#: Heatmap pixels upsampled at once by :meth:`HeatmapBatch.frames` (float32: 16 MB).
FRAME_ELEMENTS = 1 << 22


@dataclass
class HeatmapBatch:
    """The heatmaps of a chunk of samples and their masks, as every metric reads them.

    Attributes:
        heatmaps: [n, K, gy, gx] float64 (K: every (explainer, start layer) of a sample); entries of a
            heatmap that holds NaN or inf are zeroed (``finite`` says which).
        finite: [n, K] bool, whether the heatmap was finite.
        projector: the (frame, grid) geometry.
        mask_projection: [n, gy, gx] U_yᵀ M U_x of each sample's mask.
        mask_area: [n] object pixels.
        box_projection: [n, gy, gx] the same for the mask's bounding box (zeros for an empty mask).
        box_area: [n] pixels of the bounding box.
        masks: [n, Y, X] bool, the masks' pixels; None when scoring from projections only (then
            metrics that need pixels cannot run).
    """

    heatmaps: np.ndarray
    projector: MaskProjector
    mask_projection: np.ndarray
    mask_area: np.ndarray
    box_projection: np.ndarray
    box_area: np.ndarray
    masks: np.ndarray | None = None
    finite: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        heatmaps = np.asarray(self.heatmaps, dtype=np.float64)
        self.finite = np.isfinite(heatmaps).all(axis=(-2, -1))
        self.heatmaps = np.where(self.finite[..., None, None], heatmaps, 0.0)

    @property
    def frame_pixels(self) -> int:
        """Y·X."""
        return self.projector.frame[0] * self.projector.frame[1]

    @cached_property
    def candidates(self) -> np.ndarray:
        """up(H) on the pixels that can hold its minimum or maximum: [n, K, cy, cx] float64."""
        return self.projector.extreme_candidates(self.heatmaps)

    @cached_property
    def low(self) -> np.ndarray:
        """min over the frame of up(H): [n, K]."""
        return self.candidates.min(axis=(-2, -1))

    @cached_property
    def high(self) -> np.ndarray:
        """max over the frame of up(H): [n, K]."""
        return self.candidates.max(axis=(-2, -1))

    @cached_property
    def constant(self) -> np.ndarray:
        """[n, K] bool: up(H) is constant (to 1e-12 of its scale): no pixel ranks above another."""
        return self.high - self.low <= 1e-12 * np.maximum(np.abs(self.low), 1e-30)

    def edge_cases(self, degenerate: np.ndarray) -> np.ndarray:
        """[n, K] int8 :class:`EdgeCase` codes: non-finite heatmap, else empty mask, else ``degenerate``."""
        area = np.broadcast_to(np.asarray(self.mask_area)[:, None], self.finite.shape)
        edge = np.where(degenerate, EdgeCase.ZERO_SUM_HEATMAP, EdgeCase.OK)
        edge = np.where(area == 0, EdgeCase.EMPTY_MASK, edge)
        return np.where(self.finite, edge, EdgeCase.NON_FINITE_HEATMAP).astype(np.int8)

    def require_masks(self, metric: str) -> np.ndarray:
        """The masks' pixels, or a StoreError naming ``metric`` when only projections were given."""
        if self.masks is None:
            raise StoreError(f"metric {metric} reads the masks' pixels: score against a mask store, "
                             "not only a projections store")
        return self.masks

    def frames(self, select: np.ndarray, metric: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The selected heatmaps upsampled to the frame, a few at a time.

        Upsampled with ``torch.nn.functional.interpolate`` (bilinear, ``align_corners=False``, float32),
        exactly as the paper's code does; not normalised (a metric that needs it applies it).

        Args:
            select: [n, K] bool, the heatmaps to upsample.
            metric: the metric's name, for the error when no masks were given.

        Yields:
            (flat indices [m] into [n, K], frames [m, Y·X] float32, masks [m, Y·X] bool).
        """
        import torch  # only the frame metrics need it
        import torch.nn.functional as F

        masks = self.require_masks(metric).reshape(len(self.mask_area), -1)
        n_explained = self.heatmaps.shape[1]
        chosen = np.flatnonzero(np.asarray(select).ravel())
        flat = self.heatmaps.reshape(-1, *self.heatmaps.shape[-2:]).astype(np.float32)
        step = max(1, FRAME_ELEMENTS // self.frame_pixels)
        for start in range(0, len(chosen), step):
            index = chosen[start:start + step]
            up = F.interpolate(torch.from_numpy(flat[index])[:, None], size=self.projector.frame, mode="bilinear",
                               align_corners=False)
            yield index, up.reshape(len(index), -1).numpy(), masks[index // n_explained]


class LocalisationMetric(abc.ABC):
    """Scores heatmaps against masks; a subclass's class attributes are its data.

    Attributes:
        name: the registered name (configs, stores, tables).
        title: how tables and figures name it.
        reference: where the metric comes from.
        direction: ``higher`` (a higher score is better evidence) or ``lower``.
        default_threshold: valid evidence at ``score >= threshold`` (``<=`` for ``lower``).
        thresholds: the threshold grid of the claims table (the default among them).
        valid_rule: the rule for valid evidence, in words.
        score_range: the range of its scores (threshold sweeps span it).
        threshold_bounds: the thresholds it allows.
        needs_pixels: whether it reads the masks' pixels (else projections suffice).
        normalization_invariant: whether min-max normalisation leaves it unchanged.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    reference: ClassVar[str]
    direction: ClassVar[Literal["higher", "lower"]] = "higher"
    default_threshold: ClassVar[float]
    thresholds: ClassVar[tuple[float, ...]]
    valid_rule: ClassVar[str]
    score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    threshold_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    needs_pixels: ClassVar[bool] = True
    normalization_invariant: ClassVar[bool] = True

    def check_frame(self, frame: tuple[int, int]) -> None:
        """Raise ConfigError if the metric cannot score heatmaps in a (Y, X) frame (default: any frame)."""

    @abc.abstractmethod
    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        """Per-heatmap scores [n, K] float64 (NaN where undefined) and :class:`EdgeCase` codes [n, K] int8."""


_METRICS: Registry[type[LocalisationMetric]] = Registry("localisation metric", "rationality.scoring.localisation._metrics",
                                                        "name")

#: Class decorator: make a localisation metric available as ``<name>`` in configs and stores.
register_metric = _METRICS.register
#: Names of the registered metrics.
list_metrics = _METRICS.names
#: The class registered as a name (raises ConfigError listing the known names).
metric_class = _METRICS.get
#: ``check_metric(name, key="")``: the name if registered, else ConfigError (about ``key``) listing them.
check_metric = _METRICS.check


def create_metric(name: str) -> LocalisationMetric:
    """The metric registered as ``name``. Raises ConfigError listing the known names."""
    return _METRICS.get(name)()


def threshold_for(metric: str, threshold: float | None = None, thresholds: Mapping[str, float] | None = None) -> float:
    """The threshold of valid evidence of ``metric``: ``thresholds[metric]`` when given, else ``threshold``
    for RMA (the config's ``threshold``, the paper's 0.5 by default), else the metric's default."""
    if thresholds and metric in thresholds:
        return float(thresholds[metric])
    if metric == "rma" and threshold is not None:
        return float(threshold)
    return float(metric_class(metric).default_threshold)


def evidence_rule(metric: str) -> dict[str, object]:
    """How ``metric`` decides valid evidence, as keyword arguments of
    :func:`~rationality.scoring.metrics.outcome_codes`: its ``direction`` and threshold ``bounds``."""
    cls = metric_class(metric)
    return {"direction": cls.direction, "bounds": cls.threshold_bounds}


def undefined_where(edge: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``score`` with NaN wherever ``edge`` is not OK."""
    return np.where(edge == EdgeCase.OK, score, np.nan)
