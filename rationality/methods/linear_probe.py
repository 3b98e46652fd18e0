"""Linear probing: a linear head trained on frozen image embeddings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import TensorDataset

from rationality.data.loader import ImageDataset, make_loader
from rationality.methods._training import train_classifier
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, LinearHead


def image_embeddings(adapter: VisionLanguageAdapter, dataset: ImageDataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [N, D] and labels [N] of a dataset, in its order, with the tower frozen."""
    features, labels = [], []
    with torch.no_grad():
        for pixels, label, _ in make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0):
            features.append(adapter.encode_image(pixels).float())
            labels.append(torch.as_tensor(label))
    return torch.cat(features), torch.cat(labels)


@register_method("linear_probe")
@dataclasses.dataclass
class LinearProbe(AdaptationMethod):
    """Head-only training; the image tower is unchanged. Heatmaps explain the head's logit.

    Embeddings are computed once (no augmentation), then the head is trained on them.
    """

    paper_start_layer = "first"

    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    normalize_features: bool = False

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            seed: int, log_path: Path) -> ImageClassifier:
        features, labels = image_embeddings(adapter, train, self.batch_size)
        torch.manual_seed(seed)
        head = LinearHead(features.shape[1], len(class_names), self.normalize_features)
        train_classifier(head.parameters(), head, TensorDataset(features, labels), lr=self.lr,
                         epochs=self.epochs, batch_size=self.batch_size, seed=seed, log_path=log_path,
                         description="linear probe")
        return ImageClassifier(adapter, head)
