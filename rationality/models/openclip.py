"""open_clip models (CLIP ViT-B/32, ViT-B/16 and any other open_clip ViT) behind the adapter contract.

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

The project's own architectures (``rationality-tiny-vit``) are open_clip JSON configs in
``rationality/models/configs/``, registered with open_clip when this module is imported.

Attention is recorded by swapping each image block's ``nn.MultiheadAttention`` for a module that
computes the same attention explicitly from the block's own ``in_proj`` / ``out_proj`` weights and
keeps the post-softmax probabilities in the autograd graph (``need_weights=True`` would not: its
fused path returns none, and its averaged weights are detached from the per-head computation).

Optional capability (CoOp): :meth:`OpenClipAdapter.encode_text_with_context` embeds prompts whose
first tokens are learned context vectors, for open_clip's ``CLIP`` class (ViT-B/32, ViT-B/16, the
tiny config) with its BPE tokenizer, a causal text mask and EOT pooling; other text towers are
refused with a ConfigError.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
from rationality.models.base import ModelSpec, VisionLanguageAdapter, register_adapter, swapped_attention

open_clip.add_model_config(Path(__file__).parent / "configs")

#: What open_clip logs (to the root logger) whenever it builds a model without a pretrained tag.
RANDOM_INIT_WARNING = "No pretrained weights loaded for model"

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


class _DropMessage(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def without_random_init_warning() -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" warning, only that one.

    Building without a tag means either the seeded random model the spec asked for (``pretrained:
    null``) or a local file loaded right after; in both cases the warning would only mislead the log.
    """
    quiet = _DropMessage(RANDOM_INIT_WARNING)
    loggers = (logging.getLogger(), logging.getLogger(open_clip.factory.__name__))
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


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


class _RecordingAttention(nn.Module):
    """Self-attention computed from an ``nn.MultiheadAttention``'s weights, recording probabilities.

    Same inputs and outputs as the wrapped module as open_clip calls it (self-attention, optional
    additive mask); ``probabilities_sink`` receives [B, heads, T, T] per call.
    """

    def __init__(self, attention: nn.MultiheadAttention, probabilities_sink: list[torch.Tensor]) -> None:
        super().__init__()
        if not attention._qkv_same_embed_dim:
            raise ConfigError("attention recording needs a packed in_proj (query, key and value of one width)")
        self.attention = attention
        self.probabilities_sink = probabilities_sink

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        attn = self.attention
        tokens = query if attn.batch_first else query.transpose(0, 1)  # [B, T, D]
        batch, length, width = tokens.shape
        heads = attn.num_heads
        qkv = F.linear(tokens, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)  # [B, H, T, T]
        if attn_mask is not None:
            scores = scores + attn_mask
        probabilities = scores.softmax(dim=-1)
        self.probabilities_sink.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, length, width)
        out = attn.out_proj(mixed)
        return (out if attn.batch_first else out.transpose(0, 1)), None


@register_adapter("open_clip")
class OpenClipAdapter(VisionLanguageAdapter):
    """An open_clip ``CLIP`` model with a ViT image tower."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        check_quick_gelu(spec.name, spec.pretrained, spec.options)
        local_file = spec.pretrained is not None and not open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
        if spec.pretrained is None:
            torch.manual_seed(spec.seed)
        try:
            tag = None if local_file else spec.pretrained
            with without_random_init_warning() if tag is None else contextlib.nullcontext():
                self.model = open_clip.create_model(spec.name, pretrained=tag, precision="fp32", **spec.options)
        except RuntimeError as exc:
            if "not found" in str(exc):
                raise ConfigError(f"unknown open_clip model {spec.name!r}; see open_clip.list_models() "
                                  f"(project configs: rationality-tiny-vit)") from exc
            raise ConfigError(f"open_clip could not build {spec.name!r} with pretrained={spec.pretrained!r}: {exc}") from exc
        if local_file:
            load_local_weights(self.model, Path(spec.pretrained), spec.name, spec.options)
        visual = self.model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise ConfigError(f"open_clip model {spec.name!r} has no ViT image tower ({type(visual).__name__})")
        self._blocks = list(visual.transformer.resblocks)
        if not all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in self._blocks):
            raise ConfigError(f"open_clip model {spec.name!r}: image blocks do not use nn.MultiheadAttention")
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        size = visual.image_size[0]
        self.geometry = Geometry(resize=size, crop=size)
        self.grid = tuple(visual.grid_size)
        self.num_blocks = len(self._blocks)
        self.native_mean = tuple(visual.image_mean or open_clip.OPENAI_DATASET_MEAN)
        self.native_std = tuple(visual.image_std or open_clip.OPENAI_DATASET_STD)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        return self.model.encode_text(self.tokenizer(prompts).to(device))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def image_tower(self) -> nn.Module:
        return self.model.visual

    def recording_attention(self) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        return swapped_attention(self._blocks, _RecordingAttention)

    # ----------------------------------------------------------------- learned context (CoOp)

    def _context_text_tower(self) -> tuple[open_clip.model.CLIP, open_clip.tokenizer.SimpleTokenizer]:
        """The model and tokenizer, checked to be what :meth:`encode_text_with_context` supports.

        Raises:
            ConfigError: another model class (``CustomTextCLIP``, CoCa), tokenizer, pooling or text mask.
        """
        model, tokenizer = self.model, self.tokenizer
        if not isinstance(model, open_clip.model.CLIP):
            raise ConfigError(f"learned text context needs open_clip's CLIP class; {self.spec.name!r} is "
                              f"{type(model).__name__}")
        if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.reduction_fn is not None:
            raise ConfigError(f"learned text context needs open_clip's BPE SimpleTokenizer without a reduction; "
                              f"{self.spec.name!r} has {type(tokenizer).__name__}")
        if model.text_pool_type not in ("argmax", "eos") or model.attn_mask is None:
            raise ConfigError(f"learned text context needs a causal text tower pooled at the EOT token; "
                              f"{self.spec.name!r} pools {model.text_pool_type!r}"
                              f"{'' if model.attn_mask is not None else ' without a causal mask'}")
        return model, tokenizer

    @property
    def context_width(self) -> int:
        """W: the width of the text tower's token embeddings, and so of context vectors."""
        return self._context_text_tower()[0].token_embedding.embedding_dim

    def context_from_phrase(self, phrase: str) -> torch.Tensor:
        """Token embeddings [n, W] of a phrase (no SOT/EOT): CoOp's context initialisation.

        ``n`` is the phrase's number of BPE tokens (4 for ``"a photo of a"``); W the text width.
        """
        model, tokenizer = self._context_text_tower()
        ids = tokenizer.encode(phrase)
        if not ids:
            raise ConfigError(f"context phrase {phrase!r} has no tokens")
        with torch.no_grad():
            return model.token_embedding(torch.tensor(ids, device=model.logit_scale.device)).detach().clone()

    def context_prompt_ids(self, n_ctx: int, class_names: Sequence[str]) -> torch.Tensor:
        """Token ids [C, L] of ``[SOT] X_1..X_n_ctx <class name>. [EOT]``, zero-padded.

        The ``n_ctx`` placeholders stand for the context vectors. L is the longest prompt's length
        (through its EOT), not the 77-token context: under the causal mask the tokens after the EOT do not
        change its output, so this only saves work.

        Raises:
            ConfigError: a prompt longer than the model's text context (open_clip would cut it silently).
        """
        model, tokenizer = self._context_text_tower()
        placeholder = tokenizer.encode(CONTEXT_PLACEHOLDER)[:1] * n_ctx
        rows = [[tokenizer.sot_token_id, *placeholder, *tokenizer.encode(f"{name}."), tokenizer.eot_token_id]
                for name in class_names]
        longest = max(map(len, rows))
        if longest > model.context_length:
            name = class_names[max(range(len(rows)), key=lambda i: len(rows[i]))]
            raise ConfigError(f"the prompt of class {name!r} with {n_ctx} context tokens has {longest} tokens, more "
                              f"than the model's {model.context_length}")
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for row, tokens in zip(ids, rows):
            row[: len(tokens)] = torch.tensor(tokens)
        return ids

    def encode_text_with_context(self, context: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings [C, D] (not normalised) of prompts whose placeholders are ``context``.

        The same computation as open_clip's ``CLIP.encode_text`` (token and positional embeddings, the
        causal text transformer, final LayerNorm, pooling at the EOT, projection), with the token
        embeddings at positions 1..n_ctx replaced by the context vectors.

        Args:
            context: [n_ctx, W] (one context for every class) or [C, n_ctx, W] (one per class).
            prompt_ids: [C, L] from :meth:`context_prompt_ids` with the same ``n_ctx``.
        """
        model, _ = self._context_text_tower()
        cast_dtype = model.transformer.get_cast_dtype()
        prompt_ids = prompt_ids.to(model.logit_scale.device)
        length = prompt_ids.shape[1]
        tokens = model.token_embedding(prompt_ids).to(cast_dtype)  # [C, L, W]
        context = context.to(cast_dtype)
        if context.dim() == 2:
            context = context.expand(len(prompt_ids), -1, -1)
        x = torch.cat([tokens[:, :1], context, tokens[:, 1 + context.shape[1]:]], dim=1)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = open_clip.transformer.text_global_pool(x, prompt_ids, model.text_pool_type,
                                                   eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is None:
            return x
        if isinstance(model.text_projection, nn.Linear):
            return model.text_projection(x)
        return x @ model.text_projection
