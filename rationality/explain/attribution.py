"""Relevance propagation through the attention blocks (Chefer et al., ICCV 2021), from any readout.

For block l with attention A_l and gradient G_l = dy_t/dA_l (both [B, heads, T, T]) an explainer
defines a per-block relevance C_l [B, T, T]. The relevance of the last block's outputs to the
inputs of block s (start layer s) is

    R_s = (I + C_{L-1}) (I + C_{L-2}) ... (I + C_s),

the identity standing for the residual path. The heatmap is r R_s without the prefix columns, where
the readout row r [1, T] is the relevance of the image embedding to each output token of the last
block:

* **CLS token** (CLIP, BLIP, ALBEF, EVA-CLIP): the embedding is a function of token 0 alone, r = e_0,
  and r R_s is R_s's CLS row (the paper's heatmap).
* **Average pooling**: the embedding is a function of (1/N) sum_{j >= P} x_j over the N patch tokens,
  r = (1/N) sum_{j >= P} e_j, and r R_s is, by linearity, the mean of the patch tokens' rows.
* **Attention pooling** (SigLIP's MAP head: timm's ``AttentionPoolLatent``, open_clip's, and
  transformers' ``SiglipMultiheadAttentionPoolingHead``): a learned probe q attends to the tokens,
  a_h = softmax(q_h K_h(x)ᵀ / sqrt(d)) [1, T] per head h, and the embedding is a function of
  sum_h W_h a_h V_h(x) (plus the probe itself through the pooling's residual and MLP). The pooling
  is one more attention layer whose only query is the probe, and Chefer's rule for an attention
  layer applies to it unchanged: its relevance row is c = mean_h (dy_t/da_h ⊙ a_h)^+ [1, T]. It has
  no identity term, because the residual around the pooling carries the probe, a learned vector
  whose relevance belongs to no image token. So r = c: the probe's gradient-weighted attention row,
  and the heatmap for start layer s is c (I + C_{L-1}) ... (I + C_s), the probe's row times the
  block relevance product, for every s. Each explainer applies its own block rule to the probe's
  attention (:meth:`RelevanceRecurrence.pooling_relevance`): ``attention_gradient`` takes
  mean_h (dy_t/da_h)^+, ``attention_rollout`` the head-averaged attention mean_h a_h (rollout of a
  layer without residual).

The rows of all start layers come from one right-to-left recurrence on row vectors,

    v_{L-1} = r (I + C_{L-1}),    v_l = v_{l+1} (I + C_l),

at O(L·T²) per sample instead of L matrix products of O(T³) each. With r = e_0 this is exactly the
CLS-row computation of the paper's code.
"""

from __future__ import annotations

import abc

import torch

from rationality.explain.base import Explainer, Readout, register_explainer


def readout_rows_for_all_start_layers(relevances: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """r R_s for every start layer s.

    Args:
        relevances: L tensors C_l [B, T, T], block order.
        start: the readout row r, [B, T].

    Returns:
        [B, L, T]: entry s is r R_s.
    """
    row = start[:, None, :].to(relevances[0].dtype)
    rows = []
    for relevance in reversed(relevances):
        row = row + row @ relevance
        rows.append(row[:, 0])
    return torch.stack(rows[::-1], dim=1)


def cls_rows_for_all_start_layers(relevances: list[torch.Tensor]) -> torch.Tensor:
    """CLS rows of R_s for every start layer s.

    Args:
        relevances: L tensors C_l [B, T, T], block order.

    Returns:
        [B, L, T - 1]: entry s is row 0 of R_s without column 0.
    """
    batch, tokens, _ = relevances[0].shape
    start = Readout.cls_token(batch, tokens, like=relevances[0]).weights
    return readout_rows_for_all_start_layers(relevances, start)[:, :, 1:]


class RelevanceRecurrence(Explainer):
    """An explainer fully described by its per-block relevance C_l and its rule for a pooling query."""

    @abc.abstractmethod
    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """C_l [B, T, T] from A_l and G_l [B, heads, T, T]."""

    def pooling_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """The start row [B, T] from a pooling query's attention and gradient [B, heads, T]: the block
        rule applied to the query's row, without an identity term (the query is not a token)."""
        return self.block_relevance(attention, gradient)

    def rows(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor], readout: Readout) -> torch.Tensor:
        start = readout.weights
        if start is None:
            start = self.pooling_relevance(readout.attention, readout.gradient)
        return readout_rows_for_all_start_layers(
            [self.block_relevance(a, g) for a, g in zip(attentions, gradients)], start)


@register_explainer("generic_attention")
class GenericAttention(RelevanceRecurrence):
    """Generic attention attribution (the paper's eq. 2): C_l = mean_heads (G_l ⊙ A_l)^+."""

    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return (gradient * attention).clamp(min=0).mean(dim=1)


@register_explainer("attention_gradient")
class AttentionGradient(RelevanceRecurrence):
    """The paper's ablation without the attention term: C_l = mean_heads (G_l)^+."""

    def block_relevance(self, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.clamp(min=0).mean(dim=1)
