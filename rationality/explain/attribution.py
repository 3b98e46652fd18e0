"""Relevance propagation through the attention blocks (Chefer et al., ICCV 2021).

For block l with attention A_l and gradient G_l = dy_t/dA_l (both [B, heads, T, T]) an explainer
defines a per-block relevance C_l [B, T, T]. The relevance with start layer s is

    R_s = (I + C_{L-1}) (I + C_{L-2}) ... (I + C_s)

and the heatmap is its CLS row without the CLS column. The CLS rows of all start layers come from
one right-to-left recurrence on row vectors,

    v_{L-1} = e_0ᵀ (I + C_{L-1}),    v_l = v_{l+1} (I + C_l),

at O(L·T²) per sample instead of L matrix products of O(T³) each.
"""

from __future__ import annotations

import abc

import torch

from rationality.explain.base import Explainer, register_explainer


def cls_rows_for_all_start_layers(relevances: list[torch.Tensor]) -> torch.Tensor:
    """CLS rows of R_s for every start layer s.

    Args:
        relevances: L tensors C_l [B, T, T], block order.

    Returns:
        [B, L, T - 1]: entry s is row 0 of R_s without column 0.
    """
    batch, tokens, _ = relevances[0].shape
    row = torch.zeros(batch, 1, tokens, dtype=relevances[0].dtype, device=relevances[0].device)
    row[:, 0, 0] = 1.0
    rows = []
    for relevance in reversed(relevances):
        row = row + row @ relevance
        rows.append(row[:, 0, 1:])
    return torch.stack(rows[::-1], dim=1)


class _PerBlockRelevance(Explainer):
    """An explainer fully described by its per-block relevance C_l."""

    @abc.abstractmethod
    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """C_l [B, T, T] from A_l and G_l [B, heads, T, T]."""

    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
        return cls_rows_for_all_start_layers(
            [self.block_relevance(a, g) for a, g in zip(attentions, gradients)])


@register_explainer("generic_attention")
class GenericAttention(_PerBlockRelevance):
    """Generic attention attribution (the paper's eq. 2): C_l = mean_heads (G_l ⊙ A_l)^+."""

    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return (gradient * attention).clamp(min=0).mean(dim=1)


@register_explainer("attention_gradient")
class AttentionGradient(_PerBlockRelevance):
    """The paper's ablation without the attention term: C_l = mean_heads (G_l)^+."""

    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.clamp(min=0).mean(dim=1)
