"""Attribution localisation (Kohlbrenner et al. 2020), size-weighted: object share of the positive relevance
over the object's share of the frame."""

from __future__ import annotations

import math

import numpy as np

from rationality.schema import EdgeCase
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization, relevance_mass_accuracy


@register_metric("attribution_localisation")
class AttributionLocalisation(LocalisationMetric):
    """mu_w = (sum(up(H)⁺ ⊙ M) / sum(up(H)⁺)) / (|M| / (Y·X)).

    mu (the fraction) is Quantus' ``AttributionLocalisation(positive_attributions=True)``; the weight
    is Kohlbrenner et al.'s, which makes 1 the score of a uniform heatmap whatever the object's size
    (RMA credits large objects: a uniform map scores their area share). Valid evidence: ``mu_w >= 1``
    by default, more relevance per pixel on the object than on the whole image.

    Linear where up(H) >= 0, which min-max normalisation and every built-in explainer guarantee:
    then exact on the token grid (mu equals RMA there). A heatmap whose upsampled minimum is negative
    (only with ``normalization: none``) is computed on the frame with its positive part.
    """

    title = "attribution localisation"
    reference = "Kohlbrenner et al. 2020, Towards best practice in explaining neural network decisions with LRP"
    default_threshold = 1.0
    thresholds = (0.5, 1.0, 1.5, 2.0, 3.0)
    valid_rule = "the object holds at least `threshold` times its area share of the positive relevance"
    score_range = (0.0, 4.0)  # unbounded above (1 / the object's area share); sweeps stop at 4
    threshold_bounds = (0.0, math.inf)
    needs_pixels = False  # only a heatmap with negative upsampled values does (``normalization: none``)
    normalization_invariant = False

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        share, kernel_edge = relevance_mass_accuracy(batch.heatmaps, batch.mask_projection, batch.mask_area,
                                                     batch.projector, normalization)
        share = share.astype(np.float64)
        degenerate = kernel_edge == EdgeCase.ZERO_SUM_HEATMAP
        signed = (batch.low < 0) & batch.finite if normalization == "none" else np.zeros_like(batch.finite)
        if signed.any():
            for index, frames, masks in batch.frames(signed, self.name):
                positive = np.maximum(frames.astype(np.float64), 0.0)
                total = positive.sum(axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    share.reshape(-1)[index] = (positive * masks).sum(axis=1) / total
                degenerate.reshape(-1)[index] = total == 0
        edge = batch.edge_cases(degenerate)
        area_share = np.asarray(batch.mask_area, dtype=np.float64)[:, None] / batch.frame_pixels
        with np.errstate(divide="ignore", invalid="ignore"):
            return undefined_where(edge, share / area_share), edge
