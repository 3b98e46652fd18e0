"""Zero-shot classification: cosine similarity to one text prompt per class; nothing is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from rationality.data.loader import ImageDataset
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead


@register_method("zero_shot")
@dataclasses.dataclass
class ZeroShot(AdaptationMethod):
    """logits = logit_scale * cos(image, prompt_c); heatmaps explain that similarity logit."""

    paper_start_layer = "last"

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            seed: int, log_path: Path) -> ImageClassifier:
        log_path.write_text("epoch,loss,accuracy\n")
        return ImageClassifier(adapter, PromptHead.from_prompts(adapter, self.prompts(class_names)))
