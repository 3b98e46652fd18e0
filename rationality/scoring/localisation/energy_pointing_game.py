"""Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the heatmap's energy in the object's box."""

from __future__ import annotations

import numpy as np

from rationality.schema import EdgeCase
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization, relevance_mass_accuracy


@register_metric("energy_pointing_game")
class EnergyPointingGame(LocalisationMetric):
    """sum(up(H) ⊙ B) / sum(up(H)) with B the bounding box of the mask; exact on the token grid.

    The box's projection U_yᵀ B U_x is separable (an outer product of two column sums), made once per
    sample with the mask's projection. On box-annotated datasets (Stanford Dogs, ImageNet) it is close
    to RMA; on segmentations (CUB) the box also credits the background around the object.
    """

    title = "energy pointing game"
    reference = "Wang et al. 2020, Score-CAM (CVPR workshops)"
    default_threshold = 0.5
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    valid_rule = "at least `threshold` of the heatmap's energy lies in the object's bounding box"
    needs_pixels = False
    normalization_invariant = False

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        share, kernel_edge = relevance_mass_accuracy(batch.heatmaps, batch.box_projection, batch.box_area,
                                                     batch.projector, normalization)
        edge = batch.edge_cases(kernel_edge == EdgeCase.ZERO_SUM_HEATMAP)
        return undefined_where(edge, share.astype(np.float64)), edge
