"""timm ViT image towers inside open_clip (``TimmModel``): SigLIP, SigLIP 2, EVA02-CLIP and any timm ViT.

What the open_clip adapter needs from such a tower, read from the timm model itself:

* **geometry**: the input side and token grid of its patch embedding (``patch_embed.img_size`` and
  ``grid_size``), and its ``num_prefix_tokens`` (CLS and register tokens come before the patches);
* **readout**: ``attention`` for an ``AttentionPoolLatent`` head with one latent query (SigLIP's MAP
  head, ``global_pool="map"``), ``cls`` for ``global_pool="token"`` (EVA02-CLIP), ``average`` for
  ``global_pool="avg"`` over the patch tokens; anything else (max pooling, several latent queries,
  pooling that includes the prefix tokens, dynamic image sizes) is refused with a ConfigError;
* **attention recording**: each block's attention runs timm's own non-fused path (``fused_attn`` is
  switched off inside the context, so rotary embeddings, q/k norms and EVA's sub-LN are applied by
  the block's own code and weights), and a forward hook on its ``attn_drop`` keeps the post-softmax
  probabilities (dropout is the identity in eval mode; the hook's output is the tensor multiplied
  with the values). The pooling head is swapped for :class:`RecordingLatentPool`, the same
  computation written out. Outside the context the tower is unchanged, fused attention included.

The project's tiny timm towers for tests and the demo are the real timm architectures scaled down,
registered with timm under their own names: ``rationality_tiny_map_vit`` (timm's
``vit_base_patch16_siglip_224``: no CLS token, MAP head) and ``rationality_tiny_eva02_vit``
(``eva02_base_patch16_clip_224``: CLS token, rotary embeddings, SwiGLU, sub-LN).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from timm.layers import AttentionPoolLatent
from timm.models import register_model
from timm.models.eva import eva02_base_patch16_clip_224
from timm.models.vision_transformer import vit_base_patch16_siglip_224
from torch import nn

from rationality.errors import ConfigError
from rationality.models.base import AttentionRecording, swapped_modules

#: The scaled-down sizes of the tiny towers (the project's tiny CLIP's: 64 px, 8 x 8 grid, 4 blocks).
TINY_SIZES: dict[str, Any] = {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}


@register_model
def rationality_tiny_map_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """SigLIP's ViT (no CLS token, attention-pooling head) at :data:`TINY_SIZES`; random init only."""
    return vit_base_patch16_siglip_224(pretrained=False, **{**TINY_SIZES, **kwargs})


@register_model
def rationality_tiny_eva02_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """EVA02-CLIP's ViT (CLS token, rotary embeddings, SwiGLU, sub-LN) at :data:`TINY_SIZES`; random init only."""
    return eva02_base_patch16_clip_224(pretrained=False, **{**TINY_SIZES, "ref_feat_shape": (8, 8), **kwargs})


class RecordingLatentPool(nn.Module):
    """timm's ``AttentionPoolLatent`` forward with one latent query, written out; ``sink`` gets its
    post-softmax attention [B, heads, 1, N] per call."""

    def __init__(self, pool: AttentionPoolLatent, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.pool = pool
        self.sink = sink

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        pool = self.pool
        if attn_mask is not None:
            raise ValueError("attention recording supports unmasked attention pooling only")
        batch, length, width = x.shape
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        q = pool.q(pool.latent.expand(batch, -1, -1)).reshape(batch, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
        k, v = pool.kv(x).reshape(batch, length, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pool.q_norm(q), pool.k_norm(k)
        probabilities = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, 1, N]
        self.sink.append(probabilities)
        out = pool.proj_drop(pool.proj((probabilities @ v).transpose(1, 2).reshape(batch, 1, width)))
        if pool.mlp is not None:
            out = out + pool.mlp(pool.norm(out))
        return out[:, 0] if pool.pool in ("token", "avg") else out


class TimmVitTower:
    """A timm ViT trunk's geometry, readout and attention recording (see the module docstring).

    Args:
        trunk: the timm model (``TimmModel.trunk``).
        name: the model's name, for messages.

    Raises:
        ConfigError: for a trunk whose attention or pooling cannot be recorded or read out.
    """

    def __init__(self, trunk: nn.Module, name: str) -> None:
        self.trunk = trunk
        blocks = list(getattr(trunk, "blocks", []))
        attentions = [getattr(block, "attn", None) for block in blocks]
        if not blocks or not all(hasattr(a, "fused_attn") and isinstance(getattr(a, "attn_drop", None), nn.Dropout)
                                 for a in attentions):
            raise ConfigError(f"open_clip model {name!r}: timm tower {type(trunk).__name__} has no ViT blocks with "
                              f"timm attention (fused_attn and attn_drop) to record")
        if getattr(trunk, "dynamic_img_size", False):
            raise ConfigError(f"open_clip model {name!r}: timm towers with dynamic image sizes are not supported")
        self._attentions = attentions
        self.num_blocks = len(blocks)
        self.image_size = tuple(trunk.patch_embed.img_size)
        self.grid = tuple(trunk.patch_embed.grid_size)
        self.prefix_tokens = int(trunk.num_prefix_tokens)
        self.readout = self._readout(name)

    def _readout(self, name: str) -> str:
        trunk = self.trunk
        pool = getattr(trunk, "attn_pool", None)
        if pool is not None:
            if not isinstance(pool, AttentionPoolLatent) or pool.latent_len != 1:
                raise ConfigError(f"open_clip model {name!r}: attention pooling {type(pool).__name__} with "
                                  f"{getattr(pool, 'latent_len', '?')} queries; one latent query is supported")
            return "attention"
        if trunk.global_pool == "token" and getattr(trunk, "cls_token", None) is not None:
            return "cls"
        if trunk.global_pool == "avg" and not getattr(trunk, "pool_include_prefix", False):
            return "average"
        raise ConfigError(f"open_clip model {name!r}: timm pooling {trunk.global_pool!r} is not supported "
                          f"(supported: map with one latent query, token with a CLS token, avg over the patches)")

    @contextlib.contextmanager
    def recording(self) -> Iterator[AttentionRecording]:
        """Record every block's attention (and the pooling head's) during forward passes in the context."""
        recording = AttentionRecording()
        fused = [attention.fused_attn for attention in self._attentions]
        with contextlib.ExitStack() as stack:
            for attention, was_fused in zip(self._attentions, fused):
                stack.callback(setattr, attention, "fused_attn", was_fused)
                attention.fused_attn = False
                hook = attention.attn_drop.register_forward_hook(lambda _m, _i, output: recording.append(output))
                stack.callback(hook.remove)
            if self.readout == "attention":
                stack.enter_context(swapped_modules([self.trunk], "attn_pool", RecordingLatentPool, recording.pooling))
            yield recording
