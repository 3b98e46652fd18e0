"""Weights made elsewhere: read from a file, selected by a key prefix, loaded with every key and shape checked.

A weights file is read as one flat mapping from names to tensors:

* ``.safetensors`` files are flat already;
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``, and
  nested mappings are flattened by joining their keys with ``.``: open_clip's training checkpoint
  ``{"epoch": 3, "state_dict": {"module.visual.conv1.weight": ...}}`` holds the tensor
  ``state_dict.module.visual.conv1.weight``; values that are not tensors (an epoch, a name) are not
  weights and are left out;
* a directory written by transformers' ``save_pretrained``: its ``model.safetensors`` or
  ``pytorch_model.bin``, or the shards its ``*.index.json`` lists.

A prefix then selects the tensors of one module: only the keys that start with it are read, without
it (``visual.`` takes the image tower out of a whole open_clip model, ``module.`` undoes DDP's wrapping).
Loading is strict: a key the module lacks, a weight the file lacks or a tensor of another shape is a
:class:`~rationality.errors.ConfigError` naming the file, listing the keys, and, when the keys would fit
under another prefix, saying which. Keys of non-persistent buffers (which a module recomputes, such as
transformers' ``position_ids``) are not weights and are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from rationality.errors import ConfigError

#: File names ``save_pretrained`` writes, in the order they are looked for in a directory.
PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin")
PRETRAINED_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: Keys listed in a message, per kind of fault.
SHOWN_KEYS = 5


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file or ``save_pretrained`` directory, as one flat mapping (see the module).

    Raises:
        ConfigError: naming the path when it is missing, unreadable, or holds no tensor.
    """
    path = Path(path)
    if path.is_dir():
        tensors: dict[str, torch.Tensor] = {}
        for file in _pretrained_files(path):
            tensors.update(read_tensors(file))
        return tensors
    if not path.is_file():
        raise ConfigError(f"{path}: weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(path), device="cpu")
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several kinds for foreign or truncated files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable weights file ({first_line})") from exc
    tensors = dict(_flatten(payload, ""))
    if not tensors:
        raise ConfigError(f"{path}: holds no tensors (found {type(payload).__name__})")
    return tensors


def _pretrained_files(directory: Path) -> list[Path]:
    """The weights files of a ``save_pretrained`` directory: its single file, or the shards of its index."""
    for name in PRETRAINED_FILES:
        if (directory / name).is_file():
            return [directory / name]
    for name in PRETRAINED_INDEXES:
        index = directory / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{index}: not a readable shard index ({exc})") from exc
            return [directory / shard for shard in sorted(set(weight_map.values()))]
    raise ConfigError(f"{directory}: a weights directory must hold one of {', '.join(PRETRAINED_FILES + PRETRAINED_INDEXES)}")


def _flatten(value: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")


def select_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose keys start with ``prefix``, the prefix removed (all of them for ``""``)."""
    return {key[len(prefix):]: tensor for key, tensor in tensors.items() if key.startswith(prefix)}


def listed(keys: Iterable[str], what: str) -> str:
    """``n <what> (a, b, ...)``: how many keys, and the first :data:`SHOWN_KEYS` of them sorted, for a message."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:SHOWN_KEYS])
    return f"{len(ordered)} {what} ({shown}{', ...' if len(ordered) > SHOWN_KEYS else ''})"


def fitting_prefix(keys: Iterable[str], expected: Iterable[str]) -> str | None:
    """A prefix under which ``keys`` hold every one of ``expected`` (the shortest, then the first in order), or None.

    For messages: what a key-prefix option should say when a file holds the module's weights under a
    prefix (``module.``, ``visual.``, ``state_dict.module.``).
    """
    keys, expected = set(keys), sorted(expected)
    if not expected:
        return None
    probe = max(expected, key=len)  # the longest key has the fewest spurious matches
    candidates = sorted({key[: len(key) - len(probe)] for key in keys if key.endswith(probe)}, key=lambda p: (len(p), p))
    return next((prefix for prefix in candidates if all(prefix + key in keys for key in expected)), None)


def load_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str, source: str,
                 target: str, prefix_option: str) -> int:
    """Load the tensors under ``prefix`` into ``module``: every weight, nothing else, every shape equal.

    Args:
        module: what to load into (its parameters keep their dtype and device).
        tensors: a whole weights file (:func:`read_tensors`).
        prefix: the keys to read (see :func:`select_prefix`).
        source: the file, for messages.
        target: what ``module`` is, for messages (e.g. ``the image tower of open_clip model 'ViT-B-16'``).
        prefix_option: the option that sets ``prefix``, for the hint in messages.

    Returns:
        The number of tensors loaded.

    Raises:
        ConfigError: one line listing the missing, unexpected and misshapen keys, with a prefix that
            would fit when there is one.
    """
    expected = module.state_dict()
    recomputed = {name for name, _ in module.named_buffers()} - set(expected)
    selected = {key: tensor for key, tensor in select_prefix(tensors, prefix).items() if key not in recomputed}
    missing = set(expected) - set(selected)
    unexpected = set(selected) - set(expected)
    misshapen = sorted(key for key in set(expected) & set(selected) if expected[key].shape != selected[key].shape)
    if missing or unexpected or misshapen:
        faults = [listed(keys, what) for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        if misshapen:
            shapes = ", ".join(f"{key} {list(selected[key].shape)}, model {list(expected[key].shape)}"
                               for key in misshapen[:SHOWN_KEYS])
            faults.append(f"{len(misshapen)} of another shape ({shapes}{', ...' if len(misshapen) > SHOWN_KEYS else ''})")
        fit = fitting_prefix(tensors, expected) if missing else None
        hint = f"; the file holds them under {fit!r}: set {prefix_option}: {fit!r}" if fit not in (None, prefix) else ""
        where = f" under {prefix_option} {prefix!r}" if prefix else ""
        raise ConfigError(f"{source}: the weights{where} do not fit {target}: keys " + "; ".join(faults) + hint)
    module.load_state_dict(selected, strict=True)
    return len(selected)
