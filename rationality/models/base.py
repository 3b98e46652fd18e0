"""The contract every vision-language model adapter fulfils, and the adapter registry.

An adapter wraps one model family (open_clip, BLIP, ALBEF, transformers, ...) and exposes what the
methods and the explainers need: image and text embeddings, the logit scale (and bias), the
preprocessing (geometry and normalisation), the image tower's post-softmax attention probabilities
*with autograd*, recorded during a forward pass, and how its image embedding reads the last block's
tokens (:attr:`VisionLanguageAdapter.readout`: a CLS token, average pooling, or attention pooling
with a learned query, whose attention is recorded too).

What a family can and cannot run is data: :attr:`VisionLanguageAdapter.capabilities` (refined per
model by :meth:`VisionLanguageAdapter.capabilities_of`) against each method's ``requires``; the
config check compares them before any job runs.

Adding a model family is one new module that subclasses :class:`VisionLanguageAdapter`, decorates
it with :func:`register_adapter`, and is declared in :mod:`rationality.models._adapters` (imported
when first used, so that checking a config does not import every model library).
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

#: How an image embedding reads the last block's tokens: the CLS token (``cls``), the mean of the
#: patch tokens (``average``), or one learned query attending to them (``attention``, SigLIP's head).
READOUTS = ("cls", "average", "attention")
#: Capability of a text tower that embeds prompts with learned context vectors (CoOp needs it).
LEARNED_TEXT_CONTEXT = "learned_text_context"


@dataclass(frozen=True)
class ModelFamily:
    """A family of models an adapter runs, as ``rationality list models`` and the README show it.

    Attributes:
        name: e.g. ``SigLIP / SigLIP 2``.
        examples: model names for ``ModelSpec.name``, e.g. ``ViT-B-16-SigLIP2``.
        weights: what ``ModelSpec.pretrained`` may be.
        readout: how the image embedding reads the tokens (one of :data:`READOUTS`).
        capabilities: what its models support (as :meth:`VisionLanguageAdapter.capabilities_of` says).
        tiny: the project's tiny random-init architecture of the family (tests, demo).
    """

    name: str
    examples: str
    weights: str
    readout: str
    capabilities: frozenset[str]
    tiny: str


class AttentionRecording(list):
    """What :meth:`VisionLanguageAdapter.recording_attention` yields: the image blocks' attention in
    block order (the list itself, each [B, heads, T, T]), and in :attr:`pooling` the attention of an
    attention-pooling head (each [B, heads, 1, K]: its single query over the last K <= T tokens), empty
    for the other readouts. Every tensor is part of the autograd graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pooling: list[torch.Tensor] = []


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
    ``num_blocks`` (attention blocks of the image tower) and ``native_mean`` / ``native_std``, and,
    where they differ from a CLS-token ViT's, ``prefix_tokens`` and ``readout``.

    Attributes:
        prefix_tokens: P, the tokens before the gy * gx patch tokens in the image blocks (CLS,
            registers); T = P + gy * gx.
        readout: one of :data:`READOUTS`; ``cls`` means token 0 is the CLS token the embedding reads.
        capabilities: what every model of the family supports (e.g. :data:`LEARNED_TEXT_CONTEXT`).
        families: the model families the adapter runs (documentation data).
    """

    geometry: Geometry
    grid: tuple[int, int]
    num_blocks: int
    native_mean: tuple[float, float, float]
    native_std: tuple[float, float, float]
    prefix_tokens: int = 1
    readout: str = "cls"
    capabilities: frozenset[str] = frozenset()
    families: tuple[ModelFamily, ...] = ()

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

    def logit_bias(self) -> torch.Tensor | None:
        """Scalar added to the scaled similarities (SigLIP's learned ``logit_bias``); None for none."""
        return None

    @classmethod
    def capabilities_of(cls, spec: ModelSpec) -> frozenset[str] | None:
        """What the model of ``spec`` supports, decided without building it (default: :attr:`capabilities`);
        None when only building it can tell (the methods then check when they run)."""
        return cls.capabilities

    @abc.abstractmethod
    def image_tower(self) -> nn.Module:
        """The module whose parameters full fine-tuning updates and checkpoints store."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[AttentionRecording]:
        """Record the image tower's attention probabilities during forward passes in this context.

        Yields:
            An :class:`AttentionRecording` that each forward appends to, per block in order:
            post-softmax attention [B, heads, T, T] (T = prefix_tokens + gy * gx, prefix tokens
            first) that is part of the autograd graph; with ``readout == "attention"`` also the
            pooling's attention, in its ``pooling`` list.
        """


@contextlib.contextmanager
def swapped_modules(owners: Sequence[nn.Module], attribute: str,
                    recorder: Callable[[nn.Module, list[torch.Tensor]], nn.Module],
                    sink: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Within the context, each owner's ``attribute`` is ``recorder(original, sink)``; restored on exit.

    For attention modules that cannot expose their probabilities through a hook: the recorder
    recomputes the same attention explicitly and appends its probabilities to ``sink``.
    """
    originals = [getattr(owner, attribute) for owner in owners]
    try:
        for owner, original in zip(owners, originals):
            setattr(owner, attribute, recorder(original, sink))
        yield sink
    finally:
        for owner, original in zip(owners, originals):
            setattr(owner, attribute, original)


@contextlib.contextmanager
def swapped_attention(blocks: Sequence[nn.Module],
                      recorder: Callable[[nn.Module, list[torch.Tensor]], nn.Module]) -> Iterator[AttentionRecording]:
    """Within the context, each block's ``attn`` is ``recorder(original attn, sink)``; restored on exit.

    The recorders append their probabilities [B, heads, T, T] to the :class:`AttentionRecording`
    the context yields.
    """
    with swapped_modules(blocks, "attn", recorder, AttentionRecording()) as recording:
        yield recording


_ADAPTERS: Registry[type[VisionLanguageAdapter]] = Registry("model adapter", "rationality.models._adapters")

#: Class decorator: make an adapter available to configs as ``adapter: <name>``.
register_adapter = _ADAPTERS.register
#: Names of the registered model adapters.
list_adapters = _ADAPTERS.names
#: ``declare_adapter(name, module)``: importing ``module`` registers the adapter ``name``.
declare_adapter = _ADAPTERS.declare
#: ``check_adapter(name, key="")``: the name if registered, else ConfigError (about ``key``) listing them.
check_adapter = _ADAPTERS.check
#: The adapter class registered under a name (ConfigError listing the known names otherwise).
adapter_class = _ADAPTERS.get


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
