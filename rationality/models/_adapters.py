"""Imports every built-in model adapter so that its registration runs."""

from rationality.models import openclip  # noqa: F401
