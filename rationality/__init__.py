"""Prediction rationality of fine-tuned vision-language models.

Measures whether a model's predictions rest on valid evidence (attention heatmaps that
fall on the object) and how fine-tuning changes that, following Wang et al., *Beyond
Accuracy: On the Effects of Fine-tuning Towards Vision-Language Model's Prediction
Rationality* (AAAI 2025).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rationality")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
