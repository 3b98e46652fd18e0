"""Gradient-free baselines from the same recorded attention: attention rollout and raw attention.

* ``attention_rollout`` (Abnar & Zuidema, 2020): with Ā_l = ½·mean_heads(A_l) + ½·I (the residual
  path; rows still sum to 1), start layer s gives the readout row of Ā_{L-1} ··· Ā_s. Since
  Ā_l = I + ½·(mean_heads(A_l) - I), it is the same recurrence as the attribution explainers. An
  attention-pooling head enters as its head-averaged attention row, without residual mixing (its
  residual carries the learned query, not a token).
* ``raw_attention``: the head-averaged attention of the last attention layer the embedding reads
  through: for a CLS token its row of the last block (the readout row times that block's attention
  for fixed readouts, so the mean of the patch tokens' rows for average pooling), for an
  attention-pooling head the head's own attention. It has no start layer; every entry of the
  ``start_layer`` dimension holds the same map.

Neither looks at the gradient, so neither is specific to the ground-truth class.
"""

from __future__ import annotations

import torch

from rationality.explain.attribution import RelevanceRecurrence
from rationality.explain.base import Explainer, Readout, register_explainer


@register_explainer("attention_rollout")
class AttentionRollout(RelevanceRecurrence):
    """Product of residual-mixed, head-averaged attention over blocks s..L-1."""

    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        identity = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        return 0.5 * (attention.mean(dim=1) - identity)

    def pooling_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return attention.mean(dim=1)


@register_explainer("raw_attention")
class RawAttention(Explainer):
    """The readout's head-averaged attention in the last attention layer, repeated for every start layer."""

    def rows(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor], readout: Readout) -> torch.Tensor:
        if readout.weights is None:
            last = readout.attention.mean(dim=1)  # [B, T]
        else:
            last = (readout.weights[:, None, :].to(attentions[-1].dtype) @ attentions[-1].mean(dim=1))[:, 0]
        return last[:, None, :].expand(-1, len(attentions), -1).contiguous()
