"""Top-k intersection (Theiner et al. 2021): the share of the k most relevant pixels that lie on the object."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rationality.errors import ConfigError

from rationality.scoring.localisation._ranking import top_share
from rationality.scoring.localisation.base import HeatmapBatch, LocalisationMetric, register_metric, undefined_where
from rationality.scoring.rma import Normalization


@register_metric("top_k_intersection")
class TopKIntersection(LocalisationMetric):
    """|top-k(up(H)) ∩ M| / k on the upsampled frame, k = 1,000 pixels (Quantus' default).

    Rank-based, so min-max normalisation does not change it. Pixels tied at the k-th value share the
    remaining places in proportion (Quantus breaks such ties by its sort order).
    """

    title = "top-k intersection"
    reference = "Theiner et al. 2021, Interpretable semantic photo geolocalization (WACV 2022)"
    default_threshold = 0.5
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    valid_rule = "at least `threshold` of the 1,000 most relevant pixels lie on the object"
    #: Pixels in the top set.
    k: ClassVar[int] = 1000

    def check_frame(self, frame: tuple[int, int]) -> None:
        if frame[0] * frame[1] < self.k:
            raise ConfigError(f"metric {self.name} ranks the top {self.k} pixels, but the frame {frame[0]}x{frame[1]} "
                             f"holds only {frame[0] * frame[1]}")

    def score(self, batch: HeatmapBatch, normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
        edge = batch.edge_cases(batch.constant)
        share = np.full(edge.shape, np.nan)
        for index, frames, masks in batch.frames(edge == 0, self.name):
            share.reshape(-1)[index] = top_share(frames, masks, np.full(len(index), self.k))
        return undefined_where(edge, share), edge
