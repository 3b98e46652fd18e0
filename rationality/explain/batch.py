"""Logits and ground-truth-class heatmaps for a batch from one forward and one backward pass.

Samples of a ViT batch do not interact (no batch statistics), so the gradient of
sum_i y_{i, t_i} with respect to the batch's attention holds every sample's own gradient:
one backward pass per batch gives the same heatmaps as one per sample (tested).

Precision: fp32 by default. ``bf16`` / ``fp16`` run the forward and backward passes under
``torch.autocast`` (meant for GPUs; softmax stays fp32 under autocast) and change every heatmap a
little: the bound measured on the tiny test model is asserted in ``tests/test_explain.py``.
"""

from __future__ import annotations

import torch

from rationality.errors import ConfigError
from rationality.explain.base import Explainer, Readout
from rationality.models.base import READOUTS, AttentionRecording, VisionLanguageAdapter
from rationality.models.heads import ImageClassifier

#: Precision names -> autocast dtype (None: no autocast, fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def explain_batch(
    classifier: ImageClassifier, pixels: torch.Tensor, labels: torch.Tensor, explainers: list[Explainer],
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explain each sample's ground-truth class logit.

    Args:
        classifier: adapter + head, in eval mode.
        pixels: normalised images [B, 3, H, W].
        labels: ground-truth class indices [B].
        explainers: E explainers.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast); changes results slightly.

    Returns:
        logits [B, C] (detached, float32) and heatmaps [B, E, L, gy, gx] (detached, float32), where L is the
        number of image blocks and index s along L is start layer s.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    autocast_dtype = PRECISIONS[precision]
    adapter = classifier.adapter
    pixels = pixels.detach().requires_grad_(True)  # builds the graph even with frozen weights
    with (torch.enable_grad(), adapter.recording_attention() as attentions,
          torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)):
        logits = classifier(pixels).float()
        target = logits.gather(1, labels.view(-1, 1)).sum()
        gradients = torch.autograd.grad(target, [*attentions, *attentions.pooling])
    readout = adapter_readout(adapter, attentions, gradients[len(attentions):])
    gradients = [g.float() for g in gradients[: len(attentions)]]
    attentions = [a.detach().float() for a in attentions]
    heatmaps = torch.stack([explainer(attentions, gradients, readout) for explainer in explainers], dim=1)
    return logits.detach(), heatmaps.reshape(*heatmaps.shape[:3], *adapter.grid)


def adapter_readout(adapter: VisionLanguageAdapter, recording: AttentionRecording,
                    pooling_gradients: tuple[torch.Tensor, ...]) -> Readout:
    """The :class:`Readout` of one recorded forward pass, as ``adapter.readout`` says (float32)."""
    batch, _, tokens, _ = recording[0].shape
    like = torch.zeros((), device=recording[0].device)  # float32 on the batch's device
    if adapter.readout == "cls":
        return Readout.cls_token(batch, tokens, adapter.prefix_tokens, like=like)
    if adapter.readout == "average":
        return Readout.average(batch, tokens, adapter.prefix_tokens, like=like)
    if adapter.readout != "attention":
        raise ValueError(f"{type(adapter).__name__}: unknown readout {adapter.readout!r}; one of {READOUTS}")
    if len(recording.pooling) != 1:
        raise RuntimeError(f"{type(adapter).__name__}: one forward pass recorded {len(recording.pooling)} pooling "
                           f"attentions instead of one")
    return Readout.attention_pool(recording.pooling[0].detach().float(), pooling_gradients[0].float(), tokens,
                                  adapter.prefix_tokens)
