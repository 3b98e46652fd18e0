"""Imports every built-in adaptation method so that its registration runs."""

from rationality.methods import finetune, linear_probe, zero_shot  # noqa: F401
