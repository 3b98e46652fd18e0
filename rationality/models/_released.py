"""Loading the original releases' checkpoint files (ALBEF, BLIP) into our modules.

Both releases are plain pickles of a state dict (at the top level or under ``"model"``) with a timm-style
ViT image encoder; each adapter gives a function from a released key to ours (None: not used) and
:func:`load_released` does the rest: unexpected, missing and misshapen keys are errors naming the file,
and the position embeddings are resampled to the model's grid as the releases' own loaders do.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rationality.errors import ConfigError


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a square position-embedding grid bicubically, keeping the CLS entry.

    Args:
        pos_embed: [1, 1 + s * s, D] (CLS first). Any other shape is returned unchanged.
        grid: the target grid (gy, gx).

    Returns:
        [1, 1 + gy * gx, D].
    """
    side = math.isqrt(pos_embed.shape[1] - 1) if pos_embed.ndim == 3 and pos_embed.shape[1] > 1 else 0
    if side == 0 or side * side != pos_embed.shape[1] - 1 or (side, side) == tuple(grid):
        return pos_embed
    patches = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)], dim=1)


def read_state_dict(path: Path, family: str, where: str, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a released ``family`` checkpoint (top level or under ``"model"``).

    Args:
        path: the file.
        family: the model family, for messages (``ALBEF``, ``BLIP``).
        where: where the files come from, for the message when ``path`` is missing.
        allow_unsafe_pickle: unpickle in full when ``torch.load(weights_only=True)`` refuses the file.

    Raises:
        ConfigError: naming the file, when it is missing, unreadable, refused or holds no state dict.
    """
    if not path.is_file():
        raise ConfigError(f"{family} checkpoint {path} does not exist ({where})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_unsafe_pickle:
            raise ConfigError(
                f"{path}: torch.load(weights_only=True) refused it ({str(exc).splitlines()[0]}). Unpickling it in "
                f"full can run arbitrary code; if you trust its source, set options: {{allow_unsafe_pickle: true}}"
            ) from exc
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError) as exc:
        raise ConfigError(f"could not read {family} checkpoint {path}: {exc}") from exc
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds no state dict (a dict of tensors, at the top level or under 'model')")
    return state


def _refuse_if(keys: list[str], path: Path, family: str, what: str, expected: str) -> None:
    if keys:
        raise ConfigError(f"{family} checkpoint {path}: {len(keys)} {what}: {', '.join(keys[:5])}"
                          f"{', ...' if len(keys) > 5 else ''}; expected {expected}")


def load_released(module: nn.Module, released: dict[str, torch.Tensor], path: Path, family: str,
                  to_ours: Callable[[str], str | None], pos_embed: str, grid: tuple[int, int],
                  mapping: str) -> None:
    """Load the released tensors that ``to_ours`` maps into ``module`` (strict: every weight of ours).

    Args:
        module: the module whose ``state_dict`` names are "ours".
        released: the released state dict (:func:`read_state_dict`).
        path, family: for messages.
        to_ours: released key -> our key, or None for a key that is not used.
        pos_embed: our key of the ViT position embeddings, resampled to ``grid``.
        grid: the model's token grid (gy, gx).
        mapping: the mapping in words, for the message on missing weights.

    Raises:
        ConfigError: naming the file and the first keys that are unexpected, missing or misshapen.
    """
    ours = module.state_dict()
    mapped: dict[str, tuple[str, torch.Tensor]] = {}  # our key -> (released key, tensor)
    for key, tensor in released.items():
        our_key = to_ours(key)
        if our_key is not None:
            mapped[our_key] = (key, tensor)
    _refuse_if([src for k, (src, _) in mapped.items() if k not in ours], path, family, "unexpected keys",
               f"{family} pretraining or retrieval keys only")
    _refuse_if([k for k in ours if k not in mapped], path, family, "missing weights (our names)", mapping)
    source, embedding = mapped[pos_embed]
    mapped[pos_embed] = (source, interpolate_pos_embed(embedding, grid))
    misshapen = [f"{src} {tuple(t.shape)} (ours {tuple(ours[k].shape)})"
                 for k, (src, t) in mapped.items() if t.shape != ours[k].shape]
    _refuse_if(misshapen, path, family, "keys of the wrong shape", "the shapes of the configured architecture")
    module.load_state_dict({k: t for k, (_, t) in mapped.items()})
