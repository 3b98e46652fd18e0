"""Image-text pretraining of small demo models, a stand-in for CLIP's web-scale pretraining.

A randomly initialised model classifies nothing zero-shot, so the demo first trains both towers of
its tiny open_clip model to match images with the prompt of their class: cross-entropy over
``logit_scale * cos(image, prompt_c)`` for all classes c (in-batch negatives would pair most images
with same-class texts on a 4-class dataset). The result is an open_clip state dict that
``ModelSpec.pretrained`` loads like any local checkpoint file, so zero-shot, linear probing and
fine-tuning then start from a model that already looks at shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rationality.data.base import create_dataset, split_samples
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods._training import TRAIN_STATE_FILE, Run, TrainingOptions, train_epochs
from rationality.models.base import ModelSpec, create_adapter


def pretrain_image_text(model: dict[str, Any], dataset: dict[str, Any], split: str, out: str | Path, *,
                        epochs: int, lr: float, batch_size: int, seed: int = 0,
                        prompt_template: str = "a photo of a {}.") -> Path:
    """Train both towers of a seeded random model on (image, class prompt) pairs; save its state dict.

    Args:
        model: model spec; must have ``pretrained: null`` (the random initialisation to start from).
        dataset: dataset spec ``{name, reader, root, options}``.
        split: the split to train on (keep it apart from the splits methods train and test on).
        out: the ``.pt`` file to write (an open_clip ``CLIP`` state dict).

    Returns:
        ``out``. The per-epoch log (and, while it runs, the resumable state) is in ``<out>.train/``.
    """
    spec = ModelSpec.from_dict(model)
    if spec.pretrained is not None:
        raise ConfigError(f"pretraining starts from a random initialisation; got pretrained={spec.pretrained!r}")
    adapter = create_adapter(spec).train()
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    samples = split_samples(reader, split, dataset["name"])
    images = ImageDataset(reader, samples, adapter.geometry, *adapter.normalization)
    prompts = [prompt_template.format(name.replace("_", " ")) for name in reader.class_names]

    def step(module: torch.nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        image = torch.nn.functional.normalize(module.encode_image(batch[0]), dim=-1)
        text = torch.nn.functional.normalize(module.encode_text(prompts), dim=-1)
        logits = (module.logit_scale() * image @ text.T).float()
        return torch.nn.functional.cross_entropy(logits, batch[1]), logits, batch[1]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = out.with_name(out.name + ".train")
    train_epochs(adapter, step, images, TrainingOptions(lr=lr, epochs=epochs, batch_size=batch_size),
                 Run(run_dir, seed, fingerprint=f"pretrain {spec.to_dict()} {dataset} {split} {epochs} {lr} {batch_size}"),
                 description="pretrain")
    staging = out.with_name(out.name + ".tmp")
    torch.save(adapter.model.state_dict(), staging)
    os.replace(staging, out)
    (run_dir / TRAIN_STATE_FILE).unlink(missing_ok=True)
    return out
