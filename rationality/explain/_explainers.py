"""Imports every built-in explainer so that its registration runs."""

from rationality.explain import attribution, rollout  # noqa: F401
