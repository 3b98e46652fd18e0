"""Logits and ground-truth-class heatmaps for a batch from one forward and one backward pass.

Samples of a ViT batch do not interact (no batch statistics), so the gradient of
sum_i y_{i, t_i} with respect to the batch's attention holds every sample's own gradient:
one backward pass per batch gives the same heatmaps as one per sample (tested).

The backward pass asks autograd for dy/dA_l only. The GPU stage freezes the weights first
(``requires_grad_(False)``), so that autograd keeps only what the attention path needs and computes no
parameter gradients; the graph starts at the pixels, which require grad.

Precision (:data:`rationality.precision.PRECISIONS`): ``fp32`` by default; ``tf32`` runs matrix products on
TensorFloat-32 tensor cores; ``bf16`` / ``fp16`` run the forward and backward passes under ``torch.autocast``
(softmax stays fp32 there). fp16's five exponent bits would flush small attention gradients to zero, so the
target logit is multiplied by a loss scale before the backward pass and the gradients divided by it
afterwards, as automatic mixed precision does for training; when a gradient overflows, the batch is
recomputed with a smaller scale. Each changes every heatmap a little: bounds measured on the tiny test model
are asserted in ``tests/test_explain.py``, on a full-size ViT-B/16 in the README's performance section.
"""

from __future__ import annotations

import dataclasses

import torch

from rationality.errors import ConfigError
from rationality.explain.base import Explainer, Readout
from rationality.models.base import READOUTS, VisionLanguageAdapter
from rationality.models.heads import ImageClassifier
from rationality.precision import autocast_dtype, check_precision, float32_matmul_precision

#: fp16's first loss scale, and the factor it shrinks by after an overflow (down to 1). The target is a
#: sum of logits, not a mean loss, so attention gradients grow with the logit scale (up to 14 measured on
#: the tiny test model with CLIP's scale of 100): 2**10 keeps gradients up to 64 finite at the first try,
#: and lifts those down to 2**-24 / 2**10 out of fp16's underflow.
FP16_INITIAL_SCALE = 2.0**10
FP16_BACKOFF = 2.0**5


def explain_batch(
    classifier: ImageClassifier, pixels: torch.Tensor, labels: torch.Tensor, explainers: list[Explainer],
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explain each sample's ground-truth class logit.

    Args:
        classifier: adapter + head, in eval mode (weights best frozen: see the module docstring).
        pixels: normalised images [B, 3, H, W].
        labels: ground-truth class indices [B].
        explainers: E explainers.
        precision: a name of :data:`rationality.precision.PRECISIONS`; changes results slightly.

    Returns:
        logits [B, C] (detached, float32) and heatmaps [B, E, L, gy, gx] (detached, float32), where L is the
        number of image blocks and index s along L is start layer s.

    Raises:
        ConfigError: an unknown precision, or logits or gradients that overflow in fp16 (use bf16).
    """
    check_precision(precision)
    adapter = classifier.adapter
    scale = FP16_INITIAL_SCALE if precision == "fp16" else 1.0
    logits, attentions, gradients, pooling = _attention_gradients(classifier, pixels, labels, precision, scale)
    # Only fp16 checks its gradients (a check waits for the GPU); the others have float32's exponent range.
    while precision == "fp16" and not all(torch.isfinite(g).all() for g in [*gradients, *pooling.gradients]):
        if scale == 1.0:
            raise ConfigError(f"precision {precision}: the attention gradients overflow even without loss scaling; "
                              f"use bf16")
        scale = max(scale / FP16_BACKOFF, 1.0)
        logits, attentions, gradients, pooling = _attention_gradients(classifier, pixels, labels, precision, scale)
    readout = adapter_readout(adapter, attentions, pooling)
    heatmaps = torch.stack([explainer(attentions, gradients, readout) for explainer in explainers], dim=1)
    return logits, heatmaps.reshape(*heatmaps.shape[:3], *adapter.grid)


@dataclasses.dataclass(frozen=True)
class PoolingAttention:
    """The attention-pooling head's recorded attention and its gradient (each [B, heads, Q, T], float32,
    detached), empty for adapters without one."""

    attentions: tuple[torch.Tensor, ...]
    gradients: tuple[torch.Tensor, ...]


def _attention_gradients(
    classifier: ImageClassifier, pixels: torch.Tensor, labels: torch.Tensor, precision: str, scale: float,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], PoolingAttention]:
    """One forward and one backward pass: logits [B, C]; per block A_l and dy/dA_l [B, heads, T, T]; and
    the pooling head's attention and gradient.

    All float32 and detached; the gradients are divided by ``scale`` again.
    """
    dtype = autocast_dtype(precision)
    pixels = pixels.detach().requires_grad_(True)  # builds the graph even with frozen weights
    with (torch.enable_grad(), float32_matmul_precision(precision),
          classifier.adapter.recording_attention() as attentions,
          torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype is not None)):
        logits = classifier(pixels).float()
        if precision == "fp16" and not torch.isfinite(logits).all():
            raise ConfigError(f"precision {precision}: non-finite logits (fp16 overflows on this model; use bf16)")
        target = logits.gather(1, labels.view(-1, 1)).sum()
        gradients = torch.autograd.grad(target * scale if scale != 1.0 else target, [*attentions, *attentions.pooling])
    gradients = [g.float() / scale if scale != 1.0 else g.float() for g in gradients]
    pooling = PoolingAttention(tuple(a.detach().float() for a in attentions.pooling),
                               tuple(gradients[len(attentions):]))
    return logits.detach(), [a.detach().float() for a in attentions], gradients[: len(attentions)], pooling


def adapter_readout(adapter: VisionLanguageAdapter, attentions: list[torch.Tensor], pooling: PoolingAttention) -> Readout:
    """The :class:`Readout` of one recorded forward pass, as ``adapter.readout`` says (float32).

    Args:
        attentions: the blocks' attention [B, heads, T, T] (for the batch and token counts).
        pooling: the pooling head's attention and gradient (used by the ``attention`` readout).
    """
    batch, _, tokens, _ = attentions[0].shape
    like = torch.zeros((), device=attentions[0].device)  # float32 on the batch's device
    if adapter.readout == "cls":
        return Readout.cls_token(batch, tokens, adapter.prefix_tokens, like=like)
    if adapter.readout == "average":
        return Readout.average(batch, tokens, adapter.prefix_tokens, like=like)
    if adapter.readout != "attention":
        raise ValueError(f"{type(adapter).__name__}: unknown readout {adapter.readout!r}; one of {READOUTS}")
    if len(pooling.attentions) != 1:
        raise RuntimeError(f"{type(adapter).__name__}: one forward pass recorded {len(pooling.attentions)} pooling "
                           f"attentions instead of one")
    return Readout.attention_pool(pooling.attentions[0], pooling.gradients[0], tokens, adapter.prefix_tokens)
