"""Vision-language model adapters behind one contract, their registry, heads and checkpoints."""

from rationality.models.base import (
    ModelSpec, VisionLanguageAdapter, create_adapter, list_adapters, register_adapter,
)
from rationality.models.heads import ImageClassifier, LinearHead, PromptHead

__all__ = [
    "ImageClassifier", "LinearHead", "ModelSpec", "PromptHead", "VisionLanguageAdapter",
    "create_adapter", "list_adapters", "register_adapter",
]
