"""Relevance rank accuracy (Arras et al. 2022): the share of the |M| most relevant pixels that lie on the object."""

from __future__ import annotations

import numpy as np

from rationality.scoring.localisation._ranking import top_share
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization


@register_metric("relevance_rank_accuracy")
class RelevanceRankAccuracy(LocalisationMetric):
    """|top-|M|(up(H)) ∩ M| / |M| on the upsampled frame: a perfect heatmap ranks exactly the object first.

    Rank-based, so min-max normalisation does not change it; ties at the |M|-th value are shared in
    proportion (Quantus breaks them by its sort order).
    """

    title = "relevance rank accuracy"
    reference = "Arras, Osman and Samek 2022, CLEVR-XAI (Information Fusion)"
    default_threshold = 0.5
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    valid_rule = "at least `threshold` of the |M| most relevant pixels lie on the object (|M|: its area)"

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        edge = batch.edge_cases(batch.constant)
        share = np.full(edge.shape, np.nan)
        for index, frames, masks in batch.frames(edge == 0, self.name):
            share.reshape(-1)[index] = top_share(frames, masks, masks.sum(axis=1))
        return undefined_where(edge, share), edge
