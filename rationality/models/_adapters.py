"""Imports every built-in model adapter so that its registration runs."""

from rationality.models import albef  # noqa: F401
from rationality.models import blip  # noqa: F401
from rationality.models import hf_clip  # noqa: F401
from rationality.models import openclip  # noqa: F401
