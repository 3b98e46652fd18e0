"""Imports every built-in adaptation method so that its registration runs."""

from rationality.methods import finetune, linear_probe, zero_shot  # noqa: F401
from rationality.methods import flcp  # noqa: F401
from rationality.methods import coop  # noqa: F401
from rationality.methods import tip_adapter  # noqa: F401
from rationality.methods import external  # noqa: F401
