"""The contract every vision-language model adapter fulfils, and the adapter registry.

An adapter wraps one model family (open_clip, BLIP, ALBEF, ...) and exposes what the methods and
the explainers need: image and text embeddings, the logit scale, the preprocessing (geometry and
normalisation), and the image tower's post-softmax attention probabilities *with autograd*, recorded
during a forward pass.

Adding a model family is one new module that subclasses :class:`VisionLanguageAdapter`, decorates
it with :func:`register_adapter`, and is imported in :mod:`rationality.models._adapters`.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from rationality._registry import Registry
from rationality.data.geometry import Geometry
from rationality.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A model as the config names it.

    Attributes:
        adapter: registered adapter name, e.g. ``open_clip``.
        name: the family's architecture name, e.g. ``ViT-B-16-quickgelu`` for open_clip.
        pretrained: weights: a pretrained tag (``openai``), a local checkpoint file, or None for a
            seeded random initialisation (tests and the demo).
        seed: initialisation seed when ``pretrained`` is None.
        input_size: the side of the model-input frame the config expects (mask stores are made for
            it before any model is built); checked against the model when given.
        patch_size: the ViT patch side (the token grid is input_size / patch_size, and mask
            projections are made for it before any model is built); checked when given.
        image_normalization: ``model`` (the model's own statistics) or ``imagenet`` (what the paper's
            code used for every model). Changes every result.
        options: adapter-specific options.
    """

    adapter: str
    name: str
    pretrained: str | None = None
    seed: int = 0
    input_size: int | None = None
    patch_size: int | None = None
    image_normalization: str = "model"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "ModelSpec":
        known = {"adapter", "name", "pretrained", "seed", "input_size", "patch_size", "image_normalization",
                 "options"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"model spec has unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
        if spec.get("image_normalization", "model") not in ("model", "imagenet"):
            raise ConfigError(f"image_normalization must be 'model' or 'imagenet', got {spec['image_normalization']!r}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "name": self.name, "pretrained": self.pretrained, "seed": self.seed,
                "input_size": self.input_size, "patch_size": self.patch_size,
                "image_normalization": self.image_normalization, "options": dict(self.options)}


class VisionLanguageAdapter(nn.Module, abc.ABC):
    """One model family behind the project's contract.

    Subclasses set ``geometry`` (model-input frame), ``grid`` (token grid, (gy, gx)),
    ``num_blocks`` (attention blocks of the image tower) and ``native_mean`` / ``native_std``.
    """

    geometry: Geometry
    grid: tuple[int, int]
    num_blocks: int
    native_mean: tuple[float, float, float]
    native_std: tuple[float, float, float]

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per RGB channel applied to [0, 1] pixels, as the spec chooses."""
        if self.spec.image_normalization == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        return self.native_mean, self.native_std

    @abc.abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, D] (not normalised) from normalised pixels [B, 3, H, W]."""

    @abc.abstractmethod
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [len(prompts), D] (not normalised)."""

    @abc.abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """Scalar multiplier of cosine similarities (CLIP: exp of the learned log-scale)."""

    @abc.abstractmethod
    def image_tower(self) -> nn.Module:
        """The module whose parameters full fine-tuning updates and checkpoints store."""

    def whole_model(self) -> nn.Module:
        """The module whose state dict is the whole model as the family's own code saves it
        (``model.state_dict()``): fine-tuned weights made elsewhere load into it.

        Adapters that wrap one library model as ``self.model`` (open_clip's ``CLIP``, a transformers
        model) need not override this.

        Raises:
            ConfigError: for a family without such a module (its image tower can still be loaded).
        """
        model = getattr(self, "model", None)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.spec.adapter} models load no whole-model state dict made elsewhere; load the "
                              f"image tower's weights instead (weights_of: image_tower)")
        return model

    @abc.abstractmethod
    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[list[torch.Tensor]]:
        """Record the image tower's attention probabilities during forward passes in this context.

        Yields:
            A list that each forward appends to, per block in order: post-softmax attention
            [B, heads, T, T] (T = 1 + gy * gx tokens, CLS first) that is part of the autograd graph.
        """


@contextlib.contextmanager
def swapped_attention(blocks: Sequence[nn.Module],
                      recorder: Callable[[nn.Module, list[torch.Tensor]], nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Within the context, each block's ``attn`` is ``recorder(original attn, sink)``; restored on exit.

    For adapters whose attention modules cannot expose their probabilities through a hook: the
    recorder recomputes the same attention explicitly and appends its probabilities [B, heads, T, T]
    to the sink, which the context yields.
    """
    probabilities: list[torch.Tensor] = []
    originals = [block.attn for block in blocks]
    try:
        for block, original in zip(blocks, originals):
            block.attn = recorder(original, probabilities)
        yield probabilities
    finally:
        for block, original in zip(blocks, originals):
            block.attn = original


_ADAPTERS: Registry[type[VisionLanguageAdapter]] = Registry("model adapter", "rationality.models._adapters")

#: Class decorator: make an adapter available to configs as ``adapter: <name>``.
register_adapter = _ADAPTERS.register
#: Names of the registered model adapters.
list_adapters = _ADAPTERS.names


def create_adapter(spec: ModelSpec | dict[str, Any]) -> VisionLanguageAdapter:
    """Build the adapter for ``spec`` with its weights loaded, in eval mode, fp32.

    Raises:
        ConfigError: for an unknown adapter or model name, or weights that do not fit.
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    adapter = _ADAPTERS.get(spec.adapter)(spec).eval()
    if spec.input_size is not None and adapter.geometry.crop != spec.input_size:
        raise ConfigError(f"model {spec.name!r} takes {adapter.geometry.crop} px inputs but the config says "
                          f"input_size: {spec.input_size}")
    if spec.patch_size is not None and adapter.grid != (adapter.geometry.crop // spec.patch_size,) * 2:
        raise ConfigError(f"model {spec.name!r} has a {adapter.grid[0]}x{adapter.grid[1]} token grid, but the config's "
                          f"patch_size: {spec.patch_size} gives {adapter.geometry.crop // spec.patch_size} per side")
    return adapter
