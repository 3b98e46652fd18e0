"""Heatmaps for the ground-truth class from one forward and one backward pass per batch."""

from rationality.explain.base import Explainer, create_explainer, list_explainers, register_explainer
from rationality.explain.batch import explain_batch

__all__ = ["Explainer", "create_explainer", "explain_batch", "list_explainers", "register_explainer"]
