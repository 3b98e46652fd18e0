"""Localisation metrics, one class each in a registry: RMA and the metrics Quantus offers."""

from rationality.scoring.localisation.base import (
    HeatmapBatch,
    LocalisationMetric,
    check_metric,
    create_metric,
    evidence_rule,
    list_metrics,
    metric_class,
    register_metric,
    threshold_for,
)

__all__ = ["HeatmapBatch", "LocalisationMetric", "check_metric", "create_metric", "evidence_rule", "list_metrics",
           "metric_class", "register_metric", "threshold_for"]
