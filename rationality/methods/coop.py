"""CoOp: learned context vectors in front of the class names; the whole model stays frozen.

The prompt of class c is ``[SOT] ctx_1 .. ctx_n <class name> . [EOT]`` (class name at the end, as
CoOp's default), with the context vectors in token-embedding space; only they are trained, with
cross-entropy over ``logit_scale * cos(image, text_c)`` for all classes (the text tower runs on all
C prompts every batch). After training the head is a :class:`PromptHead` of the learned prompts'
embeddings with the model's logit scale, so the GPU stage explains the image-text similarity logit
and needs nothing CoOp-specific; the context vectors themselves are not kept in the checkpoint.

Differences from CoOp's code, all deliberate: the shared loop's Adam/AdamW instead of SGD (lr 0.002,
momentum 0.9, cosine schedule, warm-up) and no augmentation (CoOp: random resized crop and flip).
Because the image tower is frozen and the images are not augmented, image embeddings are computed
once, as for linear probing (the same numbers, without an image forward pass per step). Initialised
from a phrase, the context has as many vectors as the phrase has tokens (CoOp counts words, the same
for ``"a photo of a"``); with ``class_specific`` that initialisation is copied to every class (CoOp
ignores ``class_specific`` when initialising from a phrase).

It needs the adapter capability ``learned_text_context`` (``encode_text_with_context``): open_clip
models whose text tower is CLIP's (the CLIP class, EVA02-CLIP); see
:class:`~rationality.models.openclip.OpenClipAdapter`. The config check refuses CoOp runs of other
models before anything runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods._training import Run, train_epochs
from rationality.methods.base import TrainedMethod, register_method
from rationality.methods.linear_probe import classify_step, image_embeddings
from rationality.models.base import LEARNED_TEXT_CONTEXT, VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead

if TYPE_CHECKING:  # importing open_clip only to look up a method would cost seconds
    from rationality.models.openclip import OpenClipAdapter

#: Standard deviation of CoOp's random context initialisation.
CONTEXT_INIT_STD = 0.02
#: Context length without ``ctx_init`` (CoOp's default).
DEFAULT_N_CTX = 16


class _PromptLearner(nn.Module):
    """Learned context + frozen CLIP: image embeddings [B, D] -> logits [B, C].

    Args:
        adapter: a frozen open_clip adapter.
        context: initial context, [n_ctx, W] (unified) or [C, n_ctx, W] (class-specific).
        class_names: the C names placed after the context.
    """

    def __init__(self, adapter: OpenClipAdapter, context: torch.Tensor, class_names: Sequence[str]) -> None:
        super().__init__()
        self.adapter = adapter
        self.context = nn.Parameter(context)
        prompt_ids = adapter.context_prompt_ids(context.shape[-2], class_names)
        self.register_buffer("prompt_ids", prompt_ids.to(context.device))

    def class_embeddings(self) -> torch.Tensor:
        """L2-normalised embeddings [C, D] of the prompts with the current context."""
        return F.normalize(self.adapter.encode_text_with_context(self.context, self.prompt_ids), dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.adapter.logit_scale() * F.normalize(features, dim=-1) @ self.class_embeddings().T


@register_method("coop")
@dataclasses.dataclass
class CoOp(TrainedMethod):
    """Context optimisation (Zhou et al. 2022); heatmaps explain the image-text similarity logit.

    Attributes:
        n_ctx: number of context vectors. Without ``ctx_init`` they are drawn from N(0, 0.02²)
            (seeded), 16 when unset; with ``ctx_init`` it is the phrase's token count, and a value
            that differs from it is a ConfigError.
        ctx_init: phrase whose token embeddings initialise the context (``"a photo of a"``: the
            untrained prompts are the zero-shot prompts ``a photo of a {class}.``); ``""`` for random.
        class_specific: one context per class ([C, n_ctx, W]) instead of one shared ([n_ctx, W]).

    Training defaults: Adam, lr 2e-3, 10 epochs, batch 32 (CoOp: SGD, lr 0.002, cosine schedule,
    more epochs on few shots). The logged accuracy is the training class accuracy.
    """

    passes_images = False  # trains on embeddings computed once

    paper_start_layer = "last"
    requires = frozenset({LEARNED_TEXT_CONTEXT})

    lr: float = 2e-3
    n_ctx: int | None = None
    ctx_init: str = "a photo of a"
    class_specific: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx is not None and self.n_ctx < 1:
            raise ConfigError(f"coop n_ctx must be at least 1, got {self.n_ctx}")

    def initial_context(self, adapter: OpenClipAdapter, num_classes: int, seed: int) -> torch.Tensor:
        """The context before training: [n_ctx, W], or [C, n_ctx, W] with ``class_specific``."""
        if self.ctx_init:
            context = adapter.context_from_phrase(self.ctx_init.replace("_", " "))
            if self.n_ctx is not None and self.n_ctx != len(context):
                raise ConfigError(f"coop n_ctx {self.n_ctx} disagrees with ctx_init {self.ctx_init!r}, which is "
                                  f"{len(context)} tokens; leave n_ctx out, or set ctx_init: '' for random context")
            return context.expand(num_classes, -1, -1).clone() if self.class_specific else context
        n_ctx = DEFAULT_N_CTX if self.n_ctx is None else self.n_ctx
        width = adapter.context_width
        shape = (num_classes, n_ctx, width) if self.class_specific else (n_ctx, width)
        context = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * CONTEXT_INIT_STD
        return context.to(adapter.logit_scale().device)

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        if not hasattr(adapter, "encode_text_with_context"):  # open_clip checks its text tower itself
            raise ConfigError(f"CoOp is implemented for open_clip models, not for adapter {adapter.spec.adapter!r}")
        names = [name.replace("_", " ") for name in class_names]
        learner = _PromptLearner(adapter, self.initial_context(adapter, len(names), run.seed), names)
        features, labels = image_embeddings(adapter, train, run.forward_batch(self.batch_size), run)
        adapter.requires_grad_(False)
        train_epochs(learner, classify_step, TensorDataset(features, labels), self, run, "CoOp")
        adapter.requires_grad_(True)
        with torch.no_grad():
            head = PromptHead.from_embeddings(adapter, adapter.encode_text_with_context(learner.context,
                                                                                       learner.prompt_ids))
        return ImageClassifier(adapter, head)
