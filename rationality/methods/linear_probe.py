"""Linear probing: a linear head trained on frozen image embeddings."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from rationality.data.loader import ImageDataset, make_loader
from rationality.errors import ConfigError
from rationality.methods._training import Run, train_epochs
from rationality.methods.base import TrainedMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, LinearHead, PromptHead

HEAD_INITS = ("random", "zero_shot")


def image_embeddings(adapter: VisionLanguageAdapter, dataset: ImageDataset, batch_size: int,
                     run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [N, D] (float32, on the CPU) and labels [N] of a dataset, in its order, tower frozen.

    Images are decoded by ``run.num_workers`` loader processes.
    """
    features, labels = [], []
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0, num_workers=run.num_workers,
                         pin_memory=run.device.type == "cuda")
    with torch.no_grad():
        for pixels, label, _ in loader:
            features.append(adapter.encode_image(pixels.to(run.device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(label))
    return torch.cat(features), torch.cat(labels)


def classify_step(module: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``module(inputs)`` against the labels: (loss, logits [B, C], labels [B])."""
    logits = module(batch[0]).float()
    return F.cross_entropy(logits, batch[1]), logits, batch[1]


@dataclasses.dataclass
class HeadMethod(TrainedMethod):
    """A method that explains a linear head's logit (LP, FT); the head's options are its fields.

    Attributes:
        head_init: ``random`` (the paper; seeded) or ``zero_shot``: weights = logit_scale x the
            normalised prompt embeddings, bias = the model's logit bias (0 but for SigLIP), so that
            with ``normalize_features`` the untrained head gives exactly the zero-shot logits.
        normalize_features: L2-normalise image embeddings before the head.
    """

    paper_start_layer = "first"

    head_init: str = "random"
    normalize_features: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")

    def initial_head(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], dim: int,
                     seed: int) -> LinearHead:
        """The untrained head, on the adapter's device."""
        torch.manual_seed(seed)
        head = LinearHead(dim, len(class_names), self.normalize_features)
        if self.head_init == "zero_shot":
            prompt_head = PromptHead.from_prompts(adapter, self.prompts(class_names))
            with torch.no_grad():
                head.linear.weight.copy_(prompt_head.scale * prompt_head.class_embeddings)
                head.linear.bias.fill_(0.0 if prompt_head.bias is None else prompt_head.bias.item())
        return head.to(adapter.logit_scale().device)


@register_method("linear_probe")
@dataclasses.dataclass
class LinearProbe(HeadMethod):
    """Head-only training; the image tower is unchanged. Heatmaps explain the head's logit.

    Embeddings are computed once (no augmentation), then the head is trained on them.
    """

    passes_images = False  # trains on embeddings computed once

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        features, labels = image_embeddings(adapter, train, run.forward_batch(self.batch_size), run)
        head = self.initial_head(adapter, class_names, features.shape[1], run.seed)
        train_epochs(head, classify_step, TensorDataset(features, labels), self, run, "linear probe")
        return ImageClassifier(adapter, head.eval())
