"""AUC (Fawcett 2006): how well the heatmap's pixel values separate the object from the background."""

from __future__ import annotations

import numpy as np

from rationality.schema import EdgeCase
from rationality.scoring.localisation._ranking import object_auc
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization


@register_metric("auc")
class ObjectAUC(LocalisationMetric):
    """The ROC AUC of up(H) as a pixel classifier of the mask, on the upsampled frame.

    The probability that an object pixel outranks a background pixel (ties count one half): 0.5 is
    chance. Rank-based, so min-max normalisation does not change it. Undefined when the mask covers
    the whole frame (no background to rank against).
    """

    title = "AUC"
    reference = "Fawcett 2006, An introduction to ROC analysis (Pattern Recognition Letters)"
    default_threshold = 0.7
    thresholds = (0.5, 0.6, 0.7, 0.8, 0.9)
    valid_rule = "an object pixel outranks a background pixel with probability at least `threshold`"

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        edge = batch.edge_cases(batch.constant)
        full = np.asarray(batch.mask_area)[:, None] == batch.frame_pixels
        edge = np.where((edge == EdgeCase.OK) & full, EdgeCase.FULL_MASK, edge).astype(np.int8)
        auc = np.full(edge.shape, np.nan)
        for index, frames, masks in batch.frames(edge == 0, self.name):
            auc.reshape(-1)[index] = object_auc(frames, masks)
        return undefined_where(edge, auc), edge
