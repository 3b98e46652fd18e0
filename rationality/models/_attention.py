"""Recording the attention probabilities of ``nn.MultiheadAttention`` modules (with autograd).

``nn.MultiheadAttention`` does not return probabilities that keep their per-head gradient (its
fused path returns none, and ``need_weights=True`` returns them after they were used), so
:class:`RecordingMultiheadAttention` computes the same attention explicitly from the module's own
``in_proj`` / ``out_proj`` weights. Used for open_clip's ViT blocks (self-attention) and for the
attention-pooling head of transformers' SigLIP (a learned probe attending to the tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rationality.errors import ConfigError


class RecordingMultiheadAttention(nn.Module):
    """Attention computed from an ``nn.MultiheadAttention``'s weights, recording probabilities.

    Same inputs and outputs as the wrapped module as open_clip and transformers call it (self-
    attention, or a query attending to keys and values; optional additive mask);
    ``probabilities_sink`` receives [B, heads, Q, T] per call.
    """

    def __init__(self, attention: nn.MultiheadAttention, probabilities_sink: list[torch.Tensor]) -> None:
        super().__init__()
        if not attention._qkv_same_embed_dim:
            raise ConfigError("attention recording needs a packed in_proj (query, key and value of one width)")
        self.attention = attention
        self.probabilities_sink = probabilities_sink

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        attn = self.attention
        self_attention = key is query and value is query
        if not attn.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # [B, length, D]
        batch, length, width = query.shape
        heads = attn.num_heads
        if self_attention:  # one packed projection
            qkv = F.linear(query, attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        else:
            biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
            q, k, v = (F.linear(x, w, b).unflatten(-1, (heads, width // heads)).transpose(1, 2)
                       for x, w, b in zip((query, key, value), attn.in_proj_weight.chunk(3), biases))
        scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)  # [B, H, Q, T]
        if attn_mask is not None:
            scores = scores + attn_mask
        probabilities = scores.softmax(dim=-1)
        self.probabilities_sink.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, length, width)
        out = attn.out_proj(mixed)
        return (out if attn.batch_first else out.transpose(0, 1)), None
