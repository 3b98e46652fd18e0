"""Imports every built-in localisation metric so that its registration runs."""

from rationality.scoring.localisation import (  # noqa: F401
    attribution_localisation,
    auc,
    energy_pointing_game,
    pointing_game,
    relevance_mass,
    relevance_rank_accuracy,
    top_k_intersection,
)
