"""Imports every built-in dataset reader so that its registration runs."""

from rationality.data import synthetic  # noqa: F401
