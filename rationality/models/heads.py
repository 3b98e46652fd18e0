"""Classification heads on image embeddings, and the image classifier the GPU stage explains.

Which logit a heatmap explains (DESIGN §1.2) follows from the head alone:

* :class:`PromptHead` (zero-shot, FLCP, CoOp): ``logit_scale * cos(image, prompt_c)`` (plus the
  model's ``logit_bias`` for SigLIP), the image-text similarity logit of class c;
* :class:`LinearHead` (linear probe, full fine-tuning): the classification head's logit;
* :class:`TipAdapterHead` (Tip-Adapter-F): the similarity logit plus the cache model's term.

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
    """Cosine similarity to fixed class embeddings, times a fixed scale, plus an optional fixed bias.

    Args:
        num_classes: C.
        dim: embedding width D.
        biased: whether the model adds a logit bias (SigLIP); without one there is no ``bias`` buffer.
    Buffers:
        class_embeddings: [C, D], L2-normalised text embeddings of the class prompts.
        scale: scalar logit scale (CLIP: ``exp(logit_scale)``).
        bias: scalar logit bias (SigLIP's ``logit_bias``), only when ``biased``.
    """

    kind = "prompt"

    def __init__(self, num_classes: int, dim: int, biased: bool = False) -> None:
        super().__init__()
        self.register_buffer("class_embeddings", torch.zeros(num_classes, dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()) if biased else None)

    @classmethod
    def from_prompts(cls, adapter: VisionLanguageAdapter, prompts: list[str]) -> "PromptHead":
        """Embed one prompt per class with the adapter's text tower."""
        with torch.no_grad():
            return cls.from_embeddings(adapter, adapter.encode_text(prompts))

    @classmethod
    def from_embeddings(cls, adapter: VisionLanguageAdapter, embeddings: torch.Tensor) -> "PromptHead":
        """The head of class embeddings [C, D] (normalised here) with the adapter's scale and bias."""
        with torch.no_grad():
            embeddings = F.normalize(embeddings.float(), dim=-1)
            bias = adapter.logit_bias()
            head = cls(*embeddings.shape, biased=bias is not None).to(embeddings.device)
            head.class_embeddings.copy_(embeddings)
            head.scale.copy_(adapter.logit_scale().float())
            if bias is not None:
                head.bias.copy_(bias.float())
        return head

    def config(self) -> dict[str, Any]:
        biased = {"biased": True} if self.bias is not None else {}  # absent from checkpoints without a bias
        return {"num_classes": self.class_embeddings.shape[0], "dim": self.class_embeddings.shape[1], **biased}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from image embeddings [B, D]."""
        logits = self.scale * F.normalize(features, dim=-1) @ self.class_embeddings.T
        return logits if self.bias is None else logits + self.bias


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


class TipAdapterHead(nn.Module):
    """Tip-Adapter-F's classifier: the zero-shot similarity logits plus a cache model of training features.

    With f the L2-normalised image embedding, keys K [N, D], one-hot values V [N, C]::

        logits = scale * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ V

    The heatmap target is this full logit of the ground-truth class, not only its first
    (image-text similarity) term: Tip-Adapter-F never changes the image tower or the text
    classifier W, so the similarity term alone would give exactly the zero-shot heatmap, and the
    fine-tuned keys, which are all that the method learns, would not show in the explanation.

    Args:
        num_classes: C.
        dim: embedding width D.
        num_cache: N, the number of cached training samples.
        biased: whether the zero-shot head adds the model's logit bias (SigLIP).
    Attributes:
        zero_shot: the fixed zero-shot :class:`PromptHead` (class embeddings W [C, D], scale).
        keys: parameter [N, D], initialised to the normalised training embeddings (not re-normalised
            when trained, as the original).
    Buffers:
        values: [N, C], one-hot labels of the cached samples.
        alpha: scalar weight of the cache term (``alpha = 0`` is exactly the zero-shot head).
        beta: scalar sharpness of the affinity.
    """

    kind = "tip_adapter"

    def __init__(self, num_classes: int, dim: int, num_cache: int, biased: bool = False) -> None:
        super().__init__()
        self.zero_shot = PromptHead(num_classes, dim, biased)
        self.keys = nn.Parameter(torch.zeros(num_cache, dim))
        self.register_buffer("values", torch.zeros(num_cache, num_classes))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("beta", torch.ones(()))

    @classmethod
    def from_cache(cls, zero_shot: PromptHead, features: torch.Tensor, labels: torch.Tensor, alpha: float,
                   beta: float) -> "TipAdapterHead":
        """The untrained head: keys = normalised ``features`` [N, D], values = one-hot ``labels`` [N].

        The head is on ``zero_shot``'s device.
        """
        num_classes, dim = zero_shot.class_embeddings.shape
        head = cls(num_classes, dim, features.shape[0], zero_shot.bias is not None).to(zero_shot.class_embeddings.device)
        with torch.no_grad():
            head.zero_shot.load_state_dict(zero_shot.state_dict())
            head.keys.copy_(F.normalize(features.float(), dim=-1))
            head.values.copy_(F.one_hot(labels.long(), num_classes))
            head.alpha.fill_(alpha)
            head.beta.fill_(beta)
        return head

    def config(self) -> dict[str, Any]:
        return {**self.zero_shot.config(), "num_cache": self.keys.shape[0]}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from image embeddings [B, D]."""
        affinity = torch.exp(-self.beta * (1 - F.normalize(features, dim=-1) @ self.keys.T))  # [B, N]
        return self.zero_shot(features) + self.alpha * affinity @ self.values


_HEADS: dict[str, type[nn.Module]] = {PromptHead.kind: PromptHead, LinearHead.kind: LinearHead,
                                      TipAdapterHead.kind: TipAdapterHead}


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
