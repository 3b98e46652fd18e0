"""Tip-Adapter-F (Zhang et al., ECCV 2022): a cache model of training features on top of zero-shot CLIP.

The cache holds the training split's L2-normalised image embeddings as keys K [N, D] and their
one-hot labels as values V [N, C]. A test embedding f (normalised) is classified by

    logits = scale * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ V

with W [C, D] the fixed zero-shot text classifier. "-F" means the keys are then fine-tuned with
cross-entropy on the training embeddings; W, V, the image and text towers stay frozen. The result is
a :class:`~rationality.models.heads.TipAdapterHead`, whose full logit the heatmaps explain.

Differences from the original code (``gaopengcuhk/Tip-Adapter``), each a simplification:

* alpha and beta stay at their configured values. The original searches both on a validation split
  after training (and starts from ``init_beta: 1`` and a per-dataset ``init_alpha``, 1.17 for
  ImageNet); no validation split is used here.
* No augmentation: the keys are the embeddings of the preprocessed training images, computed once
  with the tower frozen (the original averages 10 random-crop-and-flip views per image for the keys
  and encodes a new random view at every training step).
* No cosine learning-rate schedule (the shared loop has none), batch size 32 instead of 256, and the
  keys of the last epoch are kept (the original keeps those of the epoch with the best *test*
  accuracy).
* The logit scale is the model's own (``exp(logit_scale)``, 100 for OpenAI CLIP, as the original's
  fixed 100; ``1 / temp`` for BLIP/ALBEF).

The cache has one row per training sample, so keys and the checkpoint grow with the training split
(Tip-Adapter is a few-shot method: 16 shots per class in its paper). Set ``shots`` to bound it; on
ImageNet's full train split the cache would hold 1.28M keys.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from torch.utils.data import TensorDataset

from rationality.data.loader import ImageDataset
from rationality.methods._training import Run, train_epochs
from rationality.methods.base import TrainedMethod, register_method
from rationality.methods.linear_probe import classify_step, image_embeddings
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead, TipAdapterHead


@register_method("tip_adapter_f")
@dataclasses.dataclass
class TipAdapterF(TrainedMethod):
    """Fine-tunes the cache keys of Tip-Adapter; heatmaps explain the full Tip-Adapter-F logit.

    Training defaults are the original's (``lr: 0.001``, ``train_epoch: 20``; AdamW with eps 1e-4 and
    torch's default weight decay 0.01), except the batch size (32, not 256).

    Attributes:
        alpha: weight of the cache term (the original searches it on a validation split; not done here).
        beta: sharpness of the affinity exp(-beta * (1 - cos)) (likewise not searched).
    """

    passes_images = False  # trains on embeddings computed once

    paper_start_layer = "last"
    trains_image_tower = False

    lr: float = 1e-3
    epochs: int = 20
    optimizer: str = "adamw"
    eps: float = 1e-4
    weight_decay: float = 0.01
    alpha: float = 1.0
    beta: float = 1.0

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        features, labels = image_embeddings(adapter, train, run.forward_batch(self.batch_size), run)
        zero_shot = PromptHead.from_prompts(adapter, self.prompts(class_names)).to(run.device)
        head = TipAdapterHead.from_cache(zero_shot, features, labels, self.alpha, self.beta)
        train_epochs(head, classify_step, TensorDataset(features, labels), self, run, "tip-adapter-f")
        return ImageClassifier(adapter, head.eval())
