"""The numeric precisions of the model-running stages (training and the GPU stage), named once.

``fp32`` runs as is; ``bf16`` and ``fp16`` run forward (and backward) passes under
``torch.autocast`` with parameters kept fp32. The names are read by the config check, the CLI and
both stages; this module does not import torch until a dtype is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rationality.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_precision(precision: str, key: str = "") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; ConfigError (about ``key``) listing them otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}", key)
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32: no autocast). Raises ConfigError for an unknown name."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]
