"""Fine-tuning stage: adapt a model to a dataset's training split with one method; write a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rationality.data.base import create_dataset
from rationality.data.loader import ImageDataset
from rationality.methods import create_method
from rationality.models.base import ModelSpec, create_adapter
from rationality.models.checkpoint import save_checkpoint, state_sha256

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_LOG_FILE = "train_log.csv"


def train_checkpoint(model: dict[str, Any], dataset: dict[str, Any], method: dict[str, Any],
                     split: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Train and write ``out_dir/checkpoint.pt`` and ``out_dir/train_log.csv``; returns the checkpoint.

    Args:
        model: model spec (see :class:`~rationality.models.base.ModelSpec`).
        dataset: dataset spec ``{name, reader, root, options}``.
        method: method spec ``{kind, <hyper-parameters>}``.
        split: the training split's name.
        seed: seeds head initialisation and data order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_spec = ModelSpec.from_dict(model)
    adaptation = create_method(method)
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    adapter = create_adapter(model_spec)
    base_sha256 = state_sha256(adapter.image_tower())
    train = ImageDataset(reader, reader.samples(split), adapter.geometry, *adapter.normalization)
    classifier = adaptation.fit(adapter, reader.class_names, train, seed, out_dir / TRAIN_LOG_FILE)
    checkpoint = out_dir / CHECKPOINT_FILE
    save_checkpoint(checkpoint, classifier, model=model_spec, method=adaptation.to_dict(),
                    class_names=list(reader.class_names), dataset=dataset["name"],
                    base_tower_sha256=base_sha256, trains_image_tower=adaptation.trains_image_tower)
    return checkpoint
