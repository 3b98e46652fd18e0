"""Classification heads on image embeddings, and the image classifier the GPU stage explains.

Which logit a heatmap explains (DESIGN §1.2) follows from the head alone:

* :class:`PromptHead` (zero-shot, FLCP, CoOp, Tip-Adapter-F): ``logit_scale * cos(image, prompt_c)``,
  the image-text similarity logit of class c;
* :class:`LinearHead` (linear probe, full fine-tuning): the classification head's logit.

A head is rebuilt from ``(kind, config, state_dict)`` by :func:`build_head`, so the GPU stage loads
any method's checkpoint without knowing how the method trained it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rationality.models.base import VisionLanguageAdapter


class PromptHead(nn.Module):
    """Cosine similarity to fixed class embeddings, times a fixed scale.

    Args:
        num_classes: C.
        dim: embedding width D.
    Buffers:
        class_embeddings: [C, D], L2-normalised text embeddings of the class prompts.
        scale: scalar logit scale (CLIP: ``exp(logit_scale)``).
    """

    kind = "prompt"

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("class_embeddings", torch.zeros(num_classes, dim))
        self.register_buffer("scale", torch.ones(()))

    @classmethod
    def from_prompts(cls, adapter: VisionLanguageAdapter, prompts: list[str]) -> "PromptHead":
        """Embed one prompt per class with the adapter's text tower."""
        with torch.no_grad():
            embeddings = F.normalize(adapter.encode_text(prompts).float(), dim=-1)
            head = cls(*embeddings.shape)
            head.class_embeddings.copy_(embeddings)
            head.scale.copy_(adapter.logit_scale().float())
        return head

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.class_embeddings.shape[0], "dim": self.class_embeddings.shape[1]}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from image embeddings [B, D]."""
        return self.scale * F.normalize(features, dim=-1) @ self.class_embeddings.T


class LinearHead(nn.Module):
    """A linear layer on (optionally L2-normalised) image embeddings; logits [B, C] from [B, D]."""

    kind = "linear"

    def __init__(self, dim: int, num_classes: int, normalize_features: bool = False) -> None:
        super().__init__()
        self.normalize_features = normalize_features
        self.linear = nn.Linear(dim, num_classes)

    def config(self) -> dict[str, Any]:
        return {"dim": self.linear.in_features, "num_classes": self.linear.out_features,
                "normalize_features": self.normalize_features}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize_features:
            features = F.normalize(features, dim=-1)
        return self.linear(features)


_HEADS: dict[str, type[nn.Module]] = {PromptHead.kind: PromptHead, LinearHead.kind: LinearHead}


def build_head(kind: str, config: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a head from its kind, constructor config and (optionally) state dict."""
    head = _HEADS[kind](**config)
    if state is not None:
        head.load_state_dict(state)
    return head


class ImageClassifier(nn.Module):
    """An adapter's image tower followed by a head: pixels [B, 3, H, W] -> logits [B, C]."""

    def __init__(self, adapter: VisionLanguageAdapter, head: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter.encode_image(pixels).float())
