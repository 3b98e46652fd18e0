"""Checkpoints every method writes and the GPU stage loads without knowing the method.

A checkpoint file holds the model spec, the method spec, the training seed, the class names, the head
(kind, config, state) and, only for methods that train the image tower, the tower's state. Otherwise
the tower is rebuilt from the model spec and checked against the SHA-256 of its weights recorded at
training time, so a changed pretrained file or a different random initialisation cannot slip through.
Files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from rationality import __version__
from rationality.errors import ConfigError, StoreError
from rationality.models.base import ModelSpec, create_adapter
from rationality.models.heads import ImageClassifier, build_head

FORMAT_VERSION = 1


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes; the shape is already in the digest.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, classifier: ImageClassifier, *, model: ModelSpec, method: dict[str, Any],
                    class_names: list[str], dataset: str, base_tower_sha256: str, trains_image_tower: bool,
                    seed: int | None = None) -> None:
    """Write the checkpoint atomically (temporary file, then rename); ``seed``: the training seed, None
    for a method that does not depend on it."""
    tower = classifier.adapter.image_tower()
    payload = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model": model.to_dict(),
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "class_names": list(class_names),
        "head": {"kind": classifier.head.kind, "config": classifier.head.config(),
                 "state": classifier.head.state_dict()},
        "base_image_tower_sha256": base_tower_sha256,
        "image_tower_state": tower.state_dict() if trains_image_tower else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    torch.save(payload, staging)
    os.replace(staging, path)


def load_checkpoint(path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The classifier of a checkpoint (eval mode) and the checkpoint's metadata (no tensors).

    Raises:
        StoreError: missing or unreadable file, unknown format.
        ConfigError: the rebuilt base model's weights differ from those the method started from.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: checkpoint file is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for truncated or foreign files
        raise StoreError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: not a rationality checkpoint of format {FORMAT_VERSION}")
    adapter = create_adapter(payload["model"])
    tower = adapter.image_tower()
    if payload["image_tower_state"] is None:
        found = state_sha256(tower)
        if found != payload["base_image_tower_sha256"]:
            raise ConfigError(
                f"{path}: the image tower rebuilt from {payload['model']} has weights sha256 {found[:12]}…, "
                f"but the method started from {payload['base_image_tower_sha256'][:12]}…")
    else:
        tower.load_state_dict(payload["image_tower_state"])
    head = payload["head"]
    classifier = ImageClassifier(adapter, build_head(head["kind"], head["config"], head["state"])).eval()
    metadata = {key: value for key, value in payload.items() if key not in ("head", "image_tower_state")}
    return classifier, metadata
