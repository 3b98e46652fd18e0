"""open_clip models behind the adapter contract: CLIP ViTs, and timm towers (SigLIP, SigLIP 2, EVA02-CLIP).

Weights, by ``ModelSpec.pretrained``:

* an open_clip pretrained tag such as ``openai``: open_clip fetches the file once into its cache
  (the Hugging Face hub cache, ``HF_HOME``; pass ``options: {cache_dir: ...}`` to choose another) and
  reads it from there afterwards; set ``HF_HUB_OFFLINE=1`` on machines without network;
* a path to a local checkpoint file: a state dict open_clip can load (``.pt``/``.bin``/
  ``.safetensors``, open_clip and third-party key layouts), or one of OpenAI's original TorchScript
  archives (``ViT-B-32.pt`` from the ``clip`` package), whose weights are read with ``torch.jit.load``
  (older torch releases refuse them under ``torch.load(weights_only=True)``) and copied into the fp32 model. Such an archive
  means OpenAI weights, so it needs a ``-quickgelu`` model name. The bits are never rounded to fp16
  on the way, as OpenAI's ``build_model`` would (DESIGN §6);
* ``None``: random initialisation seeded by ``ModelSpec.seed`` (tests and the demo).

The project's own architectures (``rationality-tiny-vit``: CLIP; ``rationality-tiny-map-vit``:
SigLIP's timm ViT with its attention-pooling head and text tower; ``rationality-tiny-eva-vit``:
EVA02-CLIP's) are open_clip JSON configs in ``rationality/models/configs/``, registered with open_clip
when this module is imported (their tiny timm towers: :mod:`rationality.models.timm_towers`).

Image towers:

* open_clip's own ``VisionTransformer`` (CLIP): attention is recorded by swapping each block's
  ``nn.MultiheadAttention`` for :class:`~rationality.models._attention.RecordingMultiheadAttention`,
  the same attention computed explicitly from the block's own weights; the embedding reads the CLS
  token (``pool_type: tok``) or the mean of the patch tokens (``avg``); attentional poolers (CoCa)
  are refused;
* ``TimmModel`` (SigLIP, SigLIP 2, EVA02-CLIP, any timm ViT): see
  :class:`~rationality.models.timm_towers.TimmVitTower`; the grid, the prefix (CLS, register) tokens
  and the readout (SigLIP's attention pooling, EVA's CLS token) come from the timm model itself.

SigLIP's ``logit_bias`` is the adapter's :meth:`~OpenClipAdapter.logit_bias`. Prompts longer than
the text context raise a ConfigError (open_clip's tokenizers would cut them silently). open_clip sets
the image statistics from a pretrained tag's config (SigLIP: mean and std 0.5); for a local weights
file it falls back to OpenAI's, so pass ``options: {force_preprocess_cfg: {mean: [...], std: [...]}}``
for a SigLIP file.

Optional capability (CoOp, :data:`~rationality.models.base.LEARNED_TEXT_CONTEXT`):
:meth:`OpenClipAdapter.encode_text_with_context` embeds prompts whose first tokens are learned context
vectors, for text towers with open_clip's BPE tokenizer, a causal mask and EOT pooling: the ``CLIP``
class (ViT-B/32, ViT-B/16, the tiny config) and ``CustomTextCLIP`` with a ``TextTransformer`` of that
kind (EVA02-CLIP). SigLIP's text tower (bidirectional, last-token pooling, SentencePiece) has none;
:meth:`OpenClipAdapter.capabilities_of` says so from the model config before anything is built.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

import open_clip
import torch
from torch import nn

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
from rationality.models._attention import RecordingMultiheadAttention
from rationality.models.base import (
    LEARNED_TEXT_CONTEXT, AttentionRecording, ModelFamily, ModelSpec, VisionLanguageAdapter, register_adapter,
    swapped_attention,
)
from rationality.models.timm_towers import TimmVitTower

open_clip.add_model_config(Path(__file__).parent / "configs")
#: The project's open_clip architectures (JSON files in ``configs/`` that open_clip registered).
PROJECT_CONFIGS = sorted(name for name in open_clip.list_models() if name.startswith("rationality-"))

#: The word whose token fills the context slots of CoOp prompts until the context vectors replace it
#: (CoOp's "X"; its value only has to differ from the EOT token the pooling looks for).
CONTEXT_PLACEHOLDER = "X"


def check_quick_gelu(name: str, pretrained: str | None, options: dict) -> None:
    """Refuse a model whose activation differs from the one its pretrained weights were trained with.

    open_clip builds ``ViT-B-32`` with nn.GELU even for ``pretrained="openai"`` (trained with
    QuickGELU) and only warns; the model then runs and silently changes every result.

    Raises:
        ConfigError: naming the ``-quickgelu`` model to use instead.
    """
    if pretrained is None:
        return
    pretrained_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not pretrained_cfg:  # a local weights file (or a tag open_clip rejects itself): activation unknown
        return
    tag_quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))
    model_quick_gelu = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False)
                            or options.get("force_quick_gelu", False))
    if tag_quick_gelu != model_quick_gelu:
        fix = f"{name}-quickgelu" if tag_quick_gelu else name.removesuffix("-quickgelu")
        raise ConfigError(
            f"open_clip model {name!r} with pretrained={pretrained!r}: the weights were trained with "
            f"{'QuickGELU' if tag_quick_gelu else 'GELU'} but the model uses "
            f"{'QuickGELU' if model_quick_gelu else 'GELU'}; use name {fix!r}")


def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip archive (its entries hold ``code/``), the format of OpenAI's ``.pt`` files."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(entry.split("/", 2)[1:2] == ["code"] for entry in archive.namelist())


def load_local_weights(model: nn.Module, path: Path, name: str, options: dict) -> None:
    """Load a local checkpoint file into the fp32 ``model`` (strict: every key, every shape).

    Raises:
        ConfigError: naming the file when it is missing, is an OpenAI TorchScript archive loaded into
            a GELU model, or does not fit the architecture.
    """
    if not path.is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(f"pretrained {str(path)!r} is neither an existing weights file nor an open_clip "
                          f"pretrained tag of {name!r} (tags: {', '.join(tags) or 'none'})")
    try:
        if is_torchscript_archive(path):
            if not ((open_clip.get_model_config(name) or {}).get("quick_gelu") or options.get("force_quick_gelu")):
                raise ConfigError(
                    f"{str(path)!r} is an OpenAI TorchScript archive (weights trained with QuickGELU) but model "
                    f"{name!r} uses GELU; use name {name + '-quickgelu'!r}")
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            # TorchScript saves non-persistent buffers (attn_mask) and OpenAI's metadata scalars too.
            non_persistent = {key for key, _ in model.named_buffers()} - set(model.state_dict())
            metadata = {"input_resolution", "context_length", "vocab_size"}
            state = {key: value for key, value in state.items() if key not in non_persistent | metadata}
            model.load_state_dict(state, strict=True)  # copies fp16 values into fp32 parameters exactly
        else:
            open_clip.load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"weights file {str(path)!r} does not fit open_clip model {name!r}: {exc}") from exc


class NativeVitTower:
    """open_clip's own ``VisionTransformer``: CLS token first, ``nn.MultiheadAttention`` blocks.

    Raises:
        ConfigError: for blocks of another attention, an attentional pooler (CoCa) or no pooling.
    """

    prefix_tokens = 1

    def __init__(self, visual: open_clip.transformer.VisionTransformer, name: str) -> None:
        self._blocks = list(visual.transformer.resblocks)
        if not all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in self._blocks):
            raise ConfigError(f"open_clip model {name!r}: image blocks do not use nn.MultiheadAttention")
        readouts = {"tok": "cls", "avg": "average"}
        if visual.attn_pool is not None or visual.pool_type not in readouts:
            raise ConfigError(f"open_clip model {name!r}: image pooling "
                              f"{'attentional pooler' if visual.attn_pool is not None else repr(visual.pool_type)} "
                              f"is not supported (supported: tok, avg)")
        self.readout = readouts[visual.pool_type]
        self.num_blocks = len(self._blocks)
        self.image_size = tuple(visual.image_size)
        self.grid = tuple(visual.grid_size)

    def recording(self) -> contextlib.AbstractContextManager[AttentionRecording]:
        return swapped_attention(self._blocks, RecordingMultiheadAttention)


def text_tower_supports_learned_context(name: str, model_config: dict) -> bool:
    """Whether the text tower of open_clip model ``name`` with config ``model_config`` is one
    :meth:`OpenClipAdapter.encode_text_with_context` supports (BPE tokenizer, causal mask, EOT pooling,
    no appended CLS), judged from the config alone (open_clip gives names with "siglip" a SentencePiece
    tokenizer)."""
    text = model_config.get("text_cfg", {})
    return ("siglip" not in name.lower() and "multimodal_cfg" not in model_config and not text.get("hf_model_name")
            and not text.get("hf_tokenizer_name") and not text.get("no_causal_mask") and not text.get("embed_cls")
            and text.get("pool_type", "argmax") in ("argmax", "eos")
            and not text.get("tokenizer_kwargs", {}).get("reduction_mask"))


@register_adapter("open_clip")
class OpenClipAdapter(VisionLanguageAdapter):
    """An open_clip ``CLIP`` or ``CustomTextCLIP`` model with a ViT image tower (open_clip's or timm's)."""

    families = (
        ModelFamily("CLIP", "ViT-B-32-quickgelu, ViT-B-16-quickgelu (OpenAI weights); ViT-B-16 (LAION, DataComp)",
                    "an open_clip tag (openai, laion2b_s34b_b88k, ...), a local state dict or OpenAI .pt file",
                    "cls", frozenset({LEARNED_TEXT_CONTEXT}), "rationality-tiny-vit"),
        ModelFamily("SigLIP / SigLIP 2", "ViT-B-16-SigLIP, ViT-B-16-SigLIP2, ViT-SO400M-14-SigLIP2, ...",
                    "the open_clip tag webli, or a local state dict (with options.force_preprocess_cfg)",
                    "attention", frozenset(), "rationality-tiny-map-vit"),
        ModelFamily("EVA02-CLIP", "EVA02-B-16, EVA02-L-14, ...",
                    "an open_clip tag (merged2b_s8b_b131k, ...) or a local state dict",
                    "cls", frozenset({LEARNED_TEXT_CONTEXT}), "rationality-tiny-eva-vit"),
    )

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        check_quick_gelu(spec.name, spec.pretrained, spec.options)
        local_file = spec.pretrained is not None and not open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
        if spec.pretrained is None:
            torch.manual_seed(spec.seed)
        try:
            tag = None if local_file else spec.pretrained
            self.model = open_clip.create_model(spec.name, pretrained=tag, precision="fp32", **spec.options)
        except RuntimeError as exc:
            if "not found" in str(exc):
                raise ConfigError(f"unknown open_clip model {spec.name!r}; see open_clip.list_models() "
                                  f"(project configs: {', '.join(PROJECT_CONFIGS)})") from exc
            raise ConfigError(f"open_clip could not build {spec.name!r} with pretrained={spec.pretrained!r}: {exc}") from exc
        if local_file:
            load_local_weights(self.model, Path(spec.pretrained), spec.name, spec.options)
        visual = self.model.visual
        if isinstance(visual, open_clip.transformer.VisionTransformer):
            self._tower: NativeVitTower | TimmVitTower = NativeVitTower(visual, spec.name)
        elif isinstance(visual, open_clip.timm_model.TimmModel):
            self._tower = TimmVitTower(visual.trunk, spec.name)
        else:
            raise ConfigError(f"open_clip model {spec.name!r} has no ViT image tower ({type(visual).__name__})")
        size = self._tower.image_size
        if size[0] != size[1] or size != tuple(visual.image_size):
            raise ConfigError(f"open_clip model {spec.name!r}: image tower input {size} differs from the model's "
                              f"{tuple(visual.image_size)} or is not square")
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.geometry = Geometry(resize=size[0], crop=size[0])
        self.grid = self._tower.grid
        self.num_blocks = self._tower.num_blocks
        self.prefix_tokens = self._tower.prefix_tokens
        self.readout = self._tower.readout
        self.native_mean = tuple(visual.image_mean or open_clip.OPENAI_DATASET_MEAN)
        self.native_std = tuple(visual.image_std or open_clip.OPENAI_DATASET_STD)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        return self.model.encode_text(self.tokenize(prompts).to(device))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids [N, context length], as the model's tokenizer writes them.

        Raises:
            ConfigError: for a prompt longer than the text context (the tokenizer would cut it).
        """
        ids = self.tokenizer(prompts)
        length = ids.shape[1]
        longer = self.tokenizer(prompts, context_length=2 * length)
        padding = self.tokenizer([""], context_length=2 * length)[0, length:]
        whole = (longer[:, :length] == ids).all(dim=1) & (longer[:, length:] == padding).all(dim=1)
        if not whole.all():
            cut = prompts[int((~whole).nonzero()[0])]
            raise ConfigError(f"prompt {cut!r} has more than open_clip model {self.spec.name!r}'s {length} text tokens")
        return ids

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned bias (0-dim); None for models without one (CLIP, EVA-CLIP)."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())

    @classmethod
    def capabilities_of(cls, spec: ModelSpec) -> frozenset[str] | None:
        """:data:`LEARNED_TEXT_CONTEXT` for text towers CoOp supports, judged from the open_clip config;
        None for a name open_clip has no config of (``hf-hub:``, ``local-dir:``, unknown names)."""
        config = open_clip.get_model_config(spec.name)
        if config is None:
            return None
        return frozenset({LEARNED_TEXT_CONTEXT}) if text_tower_supports_learned_context(spec.name, config) else frozenset()

    def image_tower(self) -> nn.Module:
        return self.model.visual

    def recording_attention(self) -> contextlib.AbstractContextManager[AttentionRecording]:
        return self._tower.recording()

    # ----------------------------------------------------------------- learned context (CoOp)

    def _context_text_tower(self) -> "ContextTextTower":
        """The text tower and tokenizer, checked to be what :meth:`encode_text_with_context` supports.

        Raises:
            ConfigError: another text tower (transformers, CoCa), tokenizer, pooling or text mask.
        """
        model, tokenizer = self.model, self.tokenizer
        if isinstance(model, open_clip.model.CLIP):
            tower = ContextTextTower(model, model.text_pool_type, getattr(model, "text_eos_id", None), tokenizer)
        elif (isinstance(model, open_clip.model.CustomTextCLIP) and isinstance(model.text, open_clip.transformer.TextTransformer)
              and model.text.cls_emb is None and not model.text.use_pad_mask):
            tower = ContextTextTower(model.text, model.text.pool_type, getattr(model.text, "eos_id", None), tokenizer)
        else:
            raise ConfigError(f"learned text context needs open_clip's CLIP class or a TextTransformer without an "
                              f"appended CLS token; {self.spec.name!r} is {type(model).__name__}")
        if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.reduction_fn is not None:
            raise ConfigError(f"learned text context needs open_clip's BPE SimpleTokenizer without a reduction; "
                              f"{self.spec.name!r} has {type(tokenizer).__name__}")
        if tower.pool_type not in ("argmax", "eos") or tower.module.attn_mask is None:
            raise ConfigError(f"learned text context needs a causal text tower pooled at the EOT token; "
                              f"{self.spec.name!r} pools {tower.pool_type!r}"
                              f"{'' if tower.module.attn_mask is not None else ' without a causal mask'}")
        return tower

    @property
    def context_width(self) -> int:
        """W: the width of the text tower's token embeddings, and so of context vectors."""
        return self._context_text_tower().module.token_embedding.embedding_dim

    def context_from_phrase(self, phrase: str) -> torch.Tensor:
        """Token embeddings [n, W] of a phrase (no SOT/EOT): CoOp's context initialisation.

        ``n`` is the phrase's number of BPE tokens (4 for ``"a photo of a"``); W the text width.
        """
        tower = self._context_text_tower()
        ids = tower.tokenizer.encode(phrase)
        if not ids:
            raise ConfigError(f"context phrase {phrase!r} has no tokens")
        with torch.no_grad():
            return tower.module.token_embedding(torch.tensor(ids, device=self.model.logit_scale.device)).detach().clone()

    def context_prompt_ids(self, n_ctx: int, class_names: Sequence[str]) -> torch.Tensor:
        """Token ids [C, L] of ``[SOT] X_1..X_n_ctx <class name>. [EOT]``, zero-padded.

        The ``n_ctx`` placeholders stand for the context vectors. L is the longest prompt's length
        (through its EOT), not the 77-token context: under the causal mask the tokens after the EOT do not
        change its output, so this only saves work.

        Raises:
            ConfigError: a prompt longer than the model's text context (open_clip would cut it silently).
        """
        tower = self._context_text_tower()
        tokenizer, context_length = tower.tokenizer, tower.module.context_length
        placeholder = tokenizer.encode(CONTEXT_PLACEHOLDER)[:1] * n_ctx
        rows = [[tokenizer.sot_token_id, *placeholder, *tokenizer.encode(f"{name}."), tokenizer.eot_token_id]
                for name in class_names]
        longest = max(map(len, rows))
        if longest > context_length:
            name = class_names[max(range(len(rows)), key=lambda i: len(rows[i]))]
            raise ConfigError(f"the prompt of class {name!r} with {n_ctx} context tokens has {longest} tokens, more "
                              f"than the model's {context_length}")
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for row, tokens in zip(ids, rows):
            row[: len(tokens)] = torch.tensor(tokens)
        return ids

    def encode_text_with_context(self, context: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings [C, D] (not normalised) of prompts whose placeholders are ``context``.

        The same computation as open_clip's ``CLIP.encode_text`` / ``TextTransformer.forward`` (token
        and positional embeddings, the causal text transformer, final LayerNorm, pooling at the EOT,
        projection), with the token embeddings at positions 1..n_ctx replaced by the context vectors.

        Args:
            context: [n_ctx, W] (one context for every class) or [C, n_ctx, W] (one per class).
            prompt_ids: [C, L] from :meth:`context_prompt_ids` with the same ``n_ctx``.
        """
        tower = self._context_text_tower()
        text = tower.module
        cast_dtype = text.transformer.get_cast_dtype()
        prompt_ids = prompt_ids.to(self.model.logit_scale.device)
        length = prompt_ids.shape[1]
        tokens = text.token_embedding(prompt_ids).to(cast_dtype)  # [C, L, W]
        context = context.to(cast_dtype)
        if context.dim() == 2:
            context = context.expand(len(prompt_ids), -1, -1)
        x = torch.cat([tokens[:, :1], context, tokens[:, 1 + context.shape[1]:]], dim=1)
        x = x + text.positional_embedding[:length].to(cast_dtype)
        x = text.transformer(x, attn_mask=text.attn_mask[:length, :length])
        x = text.ln_final(x)
        x = open_clip.transformer.text_global_pool(x, prompt_ids, tower.pool_type, eos_token_id=tower.eos_id)
        if text.text_projection is None:
            return x
        if isinstance(text.text_projection, nn.Linear):
            return text.text_projection(x)
        return x @ text.text_projection


class ContextTextTower(NamedTuple):
    """A text tower :meth:`OpenClipAdapter.encode_text_with_context` supports: the module holding its
    layers (the ``CLIP`` model itself, or ``CustomTextCLIP.text``), its pooling, EOS id and tokenizer."""

    module: nn.Module
    pool_type: str
    eos_id: int | None
    tokenizer: open_clip.tokenizer.SimpleTokenizer
