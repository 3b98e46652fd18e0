"""Zero-shot classification: cosine similarity to one text prompt per class; nothing is trained."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rationality.data.loader import ImageDataset
from rationality.methods._training import TRAIN_LOG_FILE, Run
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead


@register_method("zero_shot")
@dataclasses.dataclass
class ZeroShot(AdaptationMethod):
    """logits = logit_scale * cos(image, prompt_c); heatmaps explain that similarity logit."""

    paper_start_layer = "last"
    seeded = False  # nothing is trained: the seed changes nothing

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / TRAIN_LOG_FILE).write_text("epoch,loss,accuracy\n")
        return ImageClassifier(adapter, PromptHead.from_prompts(adapter, self.prompts(class_names)))
