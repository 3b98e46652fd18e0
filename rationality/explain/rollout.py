"""Gradient-free baselines from the same recorded attention: attention rollout and raw attention.

* ``attention_rollout`` (Abnar & Zuidema, 2020): with Ā_l = ½·mean_heads(A_l) + ½·I (the residual
  path; rows still sum to 1), start layer s gives the CLS row of Ā_{L-1} ··· Ā_s. Since
  Ā_l = I + ½·(mean_heads(A_l) - I), it is the same recurrence as the attribution explainers.
* ``raw_attention``: the CLS row of the last block's head-averaged attention. It has no start layer;
  every entry of the ``start_layer`` dimension holds the same map.

Neither looks at the gradient, so neither is specific to the ground-truth class.
"""

from __future__ import annotations

import torch

from rationality.explain.attribution import cls_rows_for_all_start_layers
from rationality.explain.base import Explainer, register_explainer


@register_explainer("attention_rollout")
class AttentionRollout(Explainer):
    """Product of residual-mixed, head-averaged attention over blocks s..L-1."""

    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
        identity = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype, device=attentions[0].device)
        return cls_rows_for_all_start_layers([0.5 * (a.mean(dim=1) - identity) for a in attentions])


@register_explainer("raw_attention")
class RawAttention(Explainer):
    """The last block's head-averaged CLS attention, repeated for every start layer."""

    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
        last = attentions[-1].mean(dim=1)[:, 0, 1:]  # [B, T - 1]
        return last[:, None, :].expand(-1, len(attentions), -1).contiguous()
