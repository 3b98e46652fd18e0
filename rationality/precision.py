"""The numeric precisions of the model-running stages (training and the GPU stage), named once.

* ``fp32`` (default): IEEE float32 everywhere; TensorFloat-32 is switched off for matrix products and
  cuDNN convolutions (PyTorch allows it for convolutions by default);
* ``tf32``: float32 tensors, matrix products and convolutions on TensorFloat-32 tensor cores (Ampere
  and later GPUs; the same as ``fp32`` on a CPU);
* ``bf16`` / ``fp16``: forward (and backward) passes under ``torch.autocast``, parameters kept fp32.

Each changes results a little, so each is a named option. The names are read by the config check, the
CLI and both stages; this module does not import torch until a dtype or a setting is asked for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from rationality.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")


def check_precision(precision: str, key: str = "") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; ConfigError (about ``key``) listing them otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}", key)
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32 and tf32: no autocast). Raises ConfigError for an
    unknown name."""
    import torch

    return {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]


@contextlib.contextmanager
def float32_matmul_precision(precision: str) -> Iterator[None]:
    """Within the context, float32 matrix products and cuDNN convolutions use TensorFloat-32 for ``tf32``
    and IEEE float32 otherwise; the previous settings are restored on exit."""
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    cudnn = torch.backends.cudnn
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=precision == "tf32"):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)
