"""Relevance mass accuracy (Arras et al. 2022), the paper's metric: the share of the heatmap's mass on the object."""

from __future__ import annotations

import numpy as np

from rationality.schema import EdgeCase
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization, relevance_mass_accuracy


@register_metric("rma")
class RelevanceMassAccuracy(LocalisationMetric):
    """RMA = sum(up(H) ⊙ M) / sum(up(H)), exact on the token grid through the mask projection."""

    title = "RMA"
    reference = "Arras, Osman and Samek 2022 (CLEVR-XAI); the paper's evidence test"
    default_threshold = 0.5
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    valid_rule = "at least `threshold` of the heatmap's mass lies on the object (the paper: 0.5)"
    needs_pixels = False
    normalization_invariant = False

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        rma, kernel_edge = relevance_mass_accuracy(batch.heatmaps, batch.mask_projection, batch.mask_area,
                                                   batch.projector, normalization)
        edge = batch.edge_cases(kernel_edge == EdgeCase.ZERO_SUM_HEATMAP)
        return undefined_where(edge, rma.astype(np.float64)), edge
