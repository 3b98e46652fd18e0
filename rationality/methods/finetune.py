"""Full fine-tuning: the image tower and a linear head trained end to end."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from rationality.data.loader import ImageDataset
from rationality.methods._training import Run, train_epochs
from rationality.methods.base import register_method
from rationality.methods.linear_probe import HeadMethod, classify_step
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier


@register_method("finetune")
@dataclasses.dataclass
class Finetune(HeadMethod):
    """Image tower + linear head (random init as the paper by default). Heatmaps explain the head's logit.

    Everything outside the image tower (the text tower, CLIP's logit scale) stays frozen.
    """

    trains_image_tower = True

    lr: float = 1e-5

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        with torch.no_grad():
            embed_dim = adapter.encode_image(train[0][0][None].to(run.device)).shape[1]
        classifier = ImageClassifier(adapter, self.initial_head(adapter, class_names, embed_dim, run.seed))
        adapter.requires_grad_(False)
        adapter.image_tower().requires_grad_(True)
        classifier.train()
        train_epochs(classifier, classify_step, train, self, run, "fine-tune")
        adapter.requires_grad_(True)
        return classifier.eval()
