"""Zero-shot classification: cosine similarity to one text prompt per class; nothing is trained."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rationality.data.loader import ImageDataset
from rationality.methods._training import Run, write_untrained_log
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead


@register_method("zero_shot")
@dataclasses.dataclass
class ZeroShot(AdaptationMethod):
    """logits = logit_scale * cos(image, prompt_c); heatmaps explain that similarity logit."""

    paper_start_layer = "last"
    uses_training_split = False
    seeded = False  # nothing is trained: the seed changes nothing

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        write_untrained_log(run.run_dir)
        return ImageClassifier(adapter, PromptHead.from_prompts(adapter, self.prompts(class_names)))
