"""Full fine-tuning: the image tower and a linear head trained end to end."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Sequence

import torch

from rationality.data.loader import ImageDataset
from rationality.methods._training import train_classifier
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, LinearHead


@register_method("finetune")
@dataclasses.dataclass
class Finetune(AdaptationMethod):
    """Image tower + randomly initialised linear head (as the paper). Heatmaps explain the head's logit."""

    paper_start_layer = "first"
    trains_image_tower = True

    lr: float = 1e-5
    epochs: int = 10
    batch_size: int = 32
    normalize_features: bool = False

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            seed: int, log_path: Path) -> ImageClassifier:
        with torch.no_grad():
            embed_dim = adapter.encode_image(train[0][0][None]).shape[1]
        torch.manual_seed(seed)
        classifier = ImageClassifier(adapter, LinearHead(embed_dim, len(class_names), self.normalize_features))
        classifier.train()
        train_classifier(
            itertools.chain(adapter.image_tower().parameters(), classifier.head.parameters()), classifier, train,
            lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, seed=seed, log_path=log_path,
            description="fine-tune")
        return classifier.eval()
