"""CLIP and SigLIP checkpoints in the transformers format (``CLIPModel``, ``SiglipModel``) behind the adapter contract.

``ModelSpec.name`` is a transformers hub id of either class (``openai/clip-vit-base-patch16``,
``google/siglip-base-patch16-224``, or any fine-tuned checkpoint of them) or a project architecture
(``rationality-tiny-hf-clip``, ``rationality-tiny-hf-siglip``: config JSON files in
``rationality/models/configs/``, tokenised with the tiny WordPiece vocabulary shipped next to them).
Weights, by ``ModelSpec.pretrained``:

* ``"hub"``: ``from_pretrained(name)``, read from the Hugging Face cache (``HF_HOME``;
  ``options: {cache_dir: ...}`` chooses another), fetched once where there is network; set
  ``HF_HUB_OFFLINE=1`` on machines without;
* a local directory written by ``save_pretrained`` (its ``config.json`` says which class);
* ``None``: random initialisation seeded by ``ModelSpec.seed``, architecture from the project JSON
  or from the hub id's config.

Options: ``cache_dir``; ``tokenizer`` (a directory or hub id overriding the checkpoint's own).

What the adapter reads from the checkpoint:

* the similarity: ``exp(logit_scale)`` times the cosine, plus SigLIP's ``logit_bias``
  (:meth:`HfClipAdapter.logit_bias`; CLIP has none);
* embeddings: CLIP projects the vision tower's pooled CLS output (``post_layernorm``) with
  ``visual_projection`` and the text tower's pooled EOS output with ``text_projection``; SigLIP's
  embeddings are the towers' pooled outputs (its attention-pooling head; the text tower's last token
  and ``head``). ``get_image_features`` is not used (a tensor in transformers 4.x, an output object in 5.x);
* prompts are tokenised as each model was trained (CLIP: padded to the longest, with the attention
  mask; SigLIP: padded to ``max_position_embeddings`` and, as big_vision trained it, without an
  attention mask, in every transformers version) and never truncated: a longer prompt is a ConfigError;
* image statistics: ``image_mean`` / ``image_std`` of a ``preprocessor_config.json`` next to the
  weights (local directory or hub cache), else the family's published ones (CLIP: OpenAI's; SigLIP:
  0.5). The geometry is the project's short-side resize and center crop at the model's input size
  (SigLIP's own processor squashes to a square: the same for square images).

Attention is recorded whatever ``attn_implementation`` the checkpoint uses: inside the context each
vision layer's ``self_attn`` is swapped for :class:`RecordingSelfAttention`, the same attention
computed from its own ``q_proj``/``k_proj``/``v_proj``/``out_proj`` weights (sdpa would return no
probabilities), and SigLIP's pooling head's ``nn.MultiheadAttention`` for
:class:`~rationality.models._attention.RecordingMultiheadAttention`. The image embedding reads the
CLS token (CLIP) or, SigLIP having none, the pooling head's learned probe (``readout: attention``).

CoOp is not available (no :data:`~rationality.models.base.LEARNED_TEXT_CONTEXT`): the config check
refuses it for these models.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
from rationality.models._attention import RecordingMultiheadAttention
from rationality.models._tokenizers import bert_tokenizer_from_vocab, check_tokenizer
from rationality.models.base import (
    AttentionRecording, ModelFamily, ModelSpec, VisionLanguageAdapter, register_adapter, swapped_modules,
)

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_VOCAB = CONFIG_DIR / "rationality-tiny-bert-vocab.txt"
PROJECT_PREFIX = "rationality-"
#: transformers model type -> (config class, model class, published image mean, std).
FAMILIES: dict[str, tuple[type, type, tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIPConfig, CLIPModel, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": (SiglipConfig, SiglipModel, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
OPTIONS = ("cache_dir", "tokenizer")


def project_configs() -> list[str]:
    """Names of the project's transformers CLIP/SigLIP architectures (JSON files in ``configs/``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json")
                  if json.loads(path.read_text()).get("model_type") in FAMILIES)


def _load_error(what: str, source: str, exc: Exception) -> ConfigError:
    return ConfigError(f"could not load the {what} of {source!r} ({exc}); a name must be a transformers CLIPModel or "
                       f"SiglipModel hub id in the Hugging Face cache (HF_HOME, options.cache_dir; HF_HUB_OFFLINE=1 "
                       f"without network), pretrained a local save_pretrained directory, or the name a project "
                       f"config {project_configs()}")


def load_model(spec: ModelSpec) -> nn.Module:
    """The ``CLIPModel`` or ``SiglipModel`` of ``spec`` in fp32: random (seeded), from the hub cache, or a directory."""
    cache_dir = spec.options.get("cache_dir")
    if spec.pretrained is not None and spec.pretrained != "hub" and not Path(spec.pretrained).is_dir():
        raise ConfigError(f"transformers pretrained={spec.pretrained!r} is neither 'hub', None, nor an existing "
                          f"directory written by save_pretrained")
    source = spec.pretrained if spec.pretrained not in (None, "hub") else spec.name
    try:
        if spec.pretrained is None and spec.name.startswith(PROJECT_PREFIX):
            if spec.name not in project_configs():
                raise ConfigError(f"unknown transformers project config {spec.name!r}; project configs: "
                                  f"{project_configs()}")
            config_dict = json.loads((CONFIG_DIR / f"{spec.name}.json").read_text())
            model_type = config_dict.pop("model_type")  # from_dict would first build (and warn about) defaults
            config = FAMILIES[model_type][0](**config_dict)
        else:
            config = AutoConfig.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise _load_error("config", source, exc) from exc
    if config.model_type not in FAMILIES:
        raise ConfigError(f"{source!r} is a transformers {config.model_type!r} model; this adapter takes "
                          f"{sorted(FAMILIES)} (BLIP has its own adapter)")
    model_class = FAMILIES[config.model_type][1]
    if spec.pretrained is None:
        torch.manual_seed(spec.seed)
        return model_class(config).float()
    try:
        return model_class.from_pretrained(source, cache_dir=cache_dir).float()
    except OSError as exc:
        raise _load_error("weights", source, exc) from exc


def load_tokenizer(spec: ModelSpec) -> Any:
    """``options.tokenizer``, the shipped tiny vocabulary for project configs, else the checkpoint's own."""
    source = spec.options.get("tokenizer")
    if source is None and spec.name.startswith(PROJECT_PREFIX) and spec.pretrained is None:
        return bert_tokenizer_from_vocab(TINY_VOCAB)
    source = source or (spec.name if spec.pretrained in (None, "hub") else spec.pretrained)
    try:
        return check_tokenizer(AutoTokenizer.from_pretrained(source, cache_dir=spec.options.get("cache_dir")), source)
    except OSError as exc:
        raise _load_error("tokenizer", source, exc) from exc


def image_statistics(spec: ModelSpec, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the checkpoint's ``preprocessor_config.json`` when there is one, else the family's."""
    path: str | Path | None = None
    if spec.pretrained == "hub":
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(spec.name, "preprocessor_config.json", cache_dir=spec.options.get("cache_dir"))
    elif spec.pretrained is not None:
        path = Path(spec.pretrained) / "preprocessor_config.json"
    _, _, mean, std = FAMILIES[model_type]
    if isinstance(path, (str, Path)) and Path(path).is_file():
        processor = json.loads(Path(path).read_text())
        mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class RecordingSelfAttention(nn.Module):
    """A transformers CLIP/SigLIP ``self_attn`` computed explicitly; ``sink`` gets [B, heads, T, T].

    Takes the arguments encoder layers of transformers 4.x and 5.x pass (vision towers pass no
    mask) and returns ``(output, probabilities)`` like the eager implementation.
    """

    def __init__(self, attention: nn.Module, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.attention = attention
        self.sink = sink

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal_attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None or causal_attention_mask is not None:
            raise ValueError("attention recording supports unmasked self-attention only")
        attn = self.attention
        batch, length, _ = hidden_states.shape

        def heads(projection: nn.Linear) -> torch.Tensor:
            return projection(hidden_states).reshape(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2)

        probabilities = ((heads(attn.q_proj) * attn.scale) @ heads(attn.k_proj).transpose(-2, -1)).softmax(dim=-1)
        self.sink.append(probabilities)
        mixed = (probabilities @ heads(attn.v_proj)).transpose(1, 2).reshape(batch, length, -1)
        return attn.out_proj(mixed), probabilities


@register_adapter("transformers")
class HfClipAdapter(VisionLanguageAdapter):
    """A transformers ``CLIPModel`` (CLS readout) or ``SiglipModel`` (attention-pooling readout)."""

    families = (
        ModelFamily("CLIP (transformers)", "openai/clip-vit-base-patch16, or any CLIPModel checkpoint",
                    "hub (the Hugging Face cache) or a save_pretrained directory", "cls", frozenset(),
                    "rationality-tiny-hf-clip"),
        ModelFamily("SigLIP (transformers)", "google/siglip-base-patch16-224, or any SiglipModel checkpoint",
                    "hub (the Hugging Face cache) or a save_pretrained directory", "attention", frozenset(),
                    "rationality-tiny-hf-siglip"),
    )

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        unknown = sorted(set(spec.options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"transformers model options {unknown} are unknown; known: {list(OPTIONS)}")
        self.model = load_model(spec)
        self.family = self.model.config.model_type
        self.tokenizer = load_tokenizer(spec)
        text_config = self.model.config.text_config
        if len(self.tokenizer) > text_config.vocab_size:
            raise ConfigError(f"the tokenizer of {spec.name!r} has {len(self.tokenizer)} tokens, the text tower "
                              f"{text_config.vocab_size}: they do not belong together")
        self.max_text_tokens = int(text_config.max_position_embeddings)
        vision = self.model.vision_model
        self._layers = list(vision.encoder.layers)
        if self.family == "siglip":
            if getattr(vision, "head", None) is None:
                raise ConfigError(f"SigLIP model {spec.name!r} has no attention-pooling head (vision_use_head: false)")
            self.prefix_tokens, self.readout = 0, "attention"
        vision_config = self.model.config.vision_config
        size, patch = int(vision_config.image_size), int(vision_config.patch_size)
        self.geometry = Geometry(resize=size, crop=size)
        self.grid = (size // patch, size // patch)
        self.num_blocks = len(self._layers)
        self.native_mean, self.native_std = image_statistics(spec, self.family)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, D] from normalised pixels [B, 3, H, W]."""
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled) if self.family == "clip" else pooled

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [N, D] of whole prompts (see the module docstring for padding and masks)."""
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        if max(lengths) > self.max_text_tokens:
            raise ConfigError(f"prompt {prompts[lengths.index(max(lengths))]!r} has {max(lengths)} tokens, more than "
                              f"model {self.spec.name!r}'s {self.max_text_tokens}")
        if self.family == "clip":
            tokens = self.tokenizer(prompts, padding="longest", return_tensors="pt")
        else:
            tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_text_tokens, return_tensors="pt")
        device = self.model.logit_scale.device
        if self.family == "clip":
            pooled = self.model.text_model(input_ids=tokens.input_ids.to(device),
                                           attention_mask=tokens.attention_mask.to(device)).pooler_output
            return self.model.text_projection(pooled)
        return self.model.text_model(input_ids=tokens.input_ids.to(device)).pooler_output

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().reshape(())

    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned bias (0-dim); None for CLIP."""
        return self.model.logit_bias.reshape(()) if self.family == "siglip" else None

    def image_tower(self) -> nn.Module:
        """The vision model (SigLIP's includes its pooling head) and CLIP's ``visual_projection``."""
        if self.family == "clip":
            return nn.ModuleDict({"vision_model": self.model.vision_model,
                                  "visual_projection": self.model.visual_projection})
        return self.model.vision_model

    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[AttentionRecording]:
        recording = AttentionRecording()
        with contextlib.ExitStack() as stack:
            stack.enter_context(swapped_modules(self._layers, "self_attn", RecordingSelfAttention, recording))
            if self.readout == "attention":
                stack.enter_context(swapped_modules([self.model.vision_model.head], "attention",
                                                    RecordingMultiheadAttention, recording.pooling))
            yield recording
