"""Fine-tuning stage: adapt a model to a dataset's training split with one method; write a checkpoint.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains its share of each batch (DDP) and rank 0
writes the checkpoint. An interrupted run resumes from its last finished epoch (see
:mod:`rationality.methods._training`); the resumable state is deleted once the checkpoint is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from rationality import __version__
from rationality.data.base import create_dataset, split_samples
from rationality.data.loader import ImageDataset
from rationality.methods import create_method
from rationality.methods._training import TRAIN_LOG_FILE, TRAIN_STATE_FILE, Run, init_distributed, world
from rationality.models.base import ModelSpec, create_adapter
from rationality.models.checkpoint import save_checkpoint, state_sha256

CHECKPOINT_FILE = "checkpoint.pt"

__all__ = ["CHECKPOINT_FILE", "TRAIN_LOG_FILE", "train_checkpoint"]


def train_checkpoint(model: dict[str, Any], dataset: dict[str, Any], method: dict[str, Any],
                     split: str, out_dir: str | Path, seed: int = 0, device: str = "auto",
                     num_workers: int = 0, max_batch_per_step: int | None = None) -> Path:
    """Train and write ``out_dir/checkpoint.pt`` and ``out_dir/train_log.csv``; returns the checkpoint.

    Args:
        model: model spec (see :class:`~rationality.models.base.ModelSpec`).
        dataset: dataset spec ``{name, reader, root, options}``.
        method: method spec ``{kind, <hyper-parameters>}``.
        split: the training split's name (not read by methods that train nothing: zero-shot, external).
        seed: seeds head initialisation, data order and everything random in training.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; under torchrun, each process's own GPU.
        num_workers: image-loading processes.
        max_batch_per_step: the most images one process passes at once; a larger global batch
            (the method's ``batch_size``) is accumulated over micro-steps. None: no limit.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_spec = ModelSpec.from_dict(model)
    adaptation = create_method(method)
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    torch_device = init_distributed(device)
    adapter = create_adapter(model_spec).to(torch_device)
    base_sha256 = state_sha256(adapter.image_tower())
    samples = (adaptation.training_samples(split_samples(reader, split, dataset["name"]), reader.class_names, seed,
                                           f"{dataset['root']} (dataset {dataset['name']}, split {split})")
               if adaptation.uses_training_split else [])
    train = ImageDataset(reader, samples, adapter.geometry, *adapter.normalization)
    fingerprint = hashlib.sha256(json.dumps(
        {"model": model_spec.to_dict(), "dataset": dataset, "method": adaptation.to_dict(), "split": split,
         "seed": seed, "base": base_sha256, "version": __version__}, sort_keys=True).encode()).hexdigest()
    run = Run(out_dir, seed, fingerprint, torch_device, num_workers, max_batch_per_step)
    classifier = adaptation.fit(adapter, reader.class_names, train, run)
    checkpoint = out_dir / CHECKPOINT_FILE
    if world()[0] == 0:
        save_checkpoint(checkpoint, classifier.cpu(), model=model_spec, method=adaptation.to_dict(),
                        class_names=list(reader.class_names), dataset=dataset["name"],
                        base_tower_sha256=base_sha256, trains_image_tower=adaptation.trains_image_tower,
                        seed=seed if adaptation.seeded else None)
        (out_dir / TRAIN_STATE_FILE).unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return checkpoint
