"""The GPU stage: per-sample logits and ground-truth-class heatmaps of a checkpoint, into a cache store.

Batches are written as they finish into ``<out>.partial``; a re-run after a crash resumes at the
first unwritten batch, and the store is renamed to ``<out>`` only when complete. Runs on the CPU
when no GPU is there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
from torch.utils.data import DataLoader

from rationality import __version__, schema
from rationality.cpus import loader_workers
from rationality.data.base import create_dataset, split_samples
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch
from rationality.methods import create_method
from rationality.models.checkpoint import file_sha256, load_checkpoint
from rationality.progress import track
from rationality.store import BatchedStoreWriter


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_inference(checkpoint: str | Path, dataset: dict[str, Any], split: str, out: str | Path, *,
                  explainers: list[str], batch_size: int = 32, device: str = "auto",
                  num_workers: int = 0, precision: str = "fp32", model_name: str | None = None,
                  method_name: str | None = None, corruption: str = schema.CLEAN, severity: int = 0) -> Path:
    """Explain every sample of ``split`` and write the cache store ``out``; returns its path.

    Args:
        checkpoint: a file written by the fine-tuning stage.
        dataset: dataset spec ``{name, reader, root, options}``; its class names must equal the
            checkpoint's.
        explainers: registered explainer names, in the order of the ``explainer`` dimension.
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast (see :mod:`rationality.explain.batch`);
            part of the store's config, as it changes every heatmap slightly.
        model_name, method_name: the config's names for the store's attributes (default: from the
            checkpoint).
        corruption, severity: what the dataset's images went through (store attributes; the
            dataset spec is what applies them).
    """
    checkpoint = Path(checkpoint)
    explainer_objects = [create_explainer(name) for name in explainers]
    classifier, meta = load_checkpoint(checkpoint)
    adapter = classifier.adapter
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    if list(reader.class_names) != meta["class_names"]:
        raise ConfigError(f"{checkpoint} was trained for classes {meta['class_names'][:5]}… but dataset "
                          f"{dataset['root']} has {list(reader.class_names)[:5]}…")
    samples = split_samples(reader, split, dataset["name"])
    mean, std = adapter.normalization
    images = ImageDataset(reader, samples, adapter.geometry, mean, std)
    checkpoint_sha256 = file_sha256(checkpoint)
    method = create_method(meta["method"])
    n, n_classes, n_layers = len(samples), len(reader.class_names), adapter.num_blocks
    config = {"model": meta["model"], "method": meta["method"], "dataset": dataset, "split": split,
              "explainers": explainers, "batch_size": batch_size, "precision": precision}
    template = schema.cache_dataset(
        ids=[s.id for s in samples], class_names=reader.class_names, explainers=explainers,
        start_layers=range(n_layers), grid=adapter.grid,
        logits=da.zeros((n, n_classes), dtype=np.float32),
        labels=da.zeros((n,), dtype=np.int32),
        heatmaps=da.zeros((n, len(explainers), n_layers, *adapter.grid), dtype=np.float32),
        attrs=schema.provenance(
            schema.StoreKind.CACHE, model=model_name or meta["model"]["name"], dataset=dataset["name"],
            split=split, method=method_name or method.kind, method_kind=method.kind,
            paper_start_layer=0 if method.paper_start_layer == "first" else n_layers - 1,
            geometry=adapter.geometry.to_dict(), image_normalization={"mean": list(mean), "std": list(std)},
            checkpoint_sha256=checkpoint_sha256, config=config, corruption=corruption, severity=severity),
    )
    fingerprint = hashlib.sha256(json.dumps(
        {"checkpoint": checkpoint_sha256, "config": config, "version": __version__}, sort_keys=True).encode()
    ).hexdigest()
    writer = BatchedStoreWriter(out, template, batch_size, fingerprint)
    torch_device = resolve_device(device)
    classifier.to(torch_device)
    pending = writer.pending_batches
    batches = [list(range(writer.batch_slice(b).start, writer.batch_slice(b).stop)) for b in pending]
    loader = DataLoader(images, batch_sampler=batches, num_workers=loader_workers(num_workers))
    for batch, (pixels, labels, _) in zip(track(pending, f"infer {checkpoint.parent}", "batches"), loader):
        labels = torch.as_tensor(labels)
        logits, heatmaps = explain_batch(classifier, pixels.to(torch_device), labels.to(torch_device),
                                         explainer_objects, precision)
        writer.write(batch, {schema.LOGITS: logits.float().cpu().numpy(),
                             schema.LABEL: labels.numpy().astype(np.int32),
                             schema.HEATMAP: heatmaps.cpu().numpy()})
    return writer.finish()
