"""ALBEF (Li et al. 2021) behind the adapter contract, rebuilt from timm and transformers parts.

Only ALBEF's image-text contrastive (ITC) path is built: the ViT image encoder and ``vision_proj``, the
text encoder (BERT layers below ``fusion_layer``) and ``text_proj``, and ``temp``; cosine / temp of
:meth:`encode_image` and :meth:`encode_text` is ALBEF's ITC similarity. Architectures (``ModelSpec.name``)
are JSON files in ``rationality/models/configs/``: ``albef-vit-b-16`` (the released 14M model: 256 px,
16x16 grid, BERT-base) and ``rationality-tiny-albef`` (tests, demo).

Weights (``ModelSpec.pretrained``): None gives a random initialisation seeded by ``ModelSpec.seed``; else
a local checkpoint file, ``ALBEF.pth`` (14M pretraining) or a fine-tuned retrieval checkpoint
(``mscoco.pth``, ``flickr30k.pth``), downloaded from the links in github.com/salesforce/ALBEF's README
(there is no hub tag). The state dict is the file or its ``"model"`` entry. The files are plain pickles,
read with ``torch.load(weights_only=True)``; a file torch refuses loads only with
``options: {allow_unsafe_pickle: true}`` (full unpickling can run arbitrary code: trusted sources only).

Key mapping, released -> ours: ``visual_encoder.*`` -> ``vision.vit.*`` (ALBEF's ViT uses timm's names),
``vision_proj.*`` -> ``vision.proj.*``, ``text_encoder.bert.*`` (pretraining; retrieval checkpoints lack
``bert.``, stripped by ALBEF's Retrieval.py) -> ``text.*`` (xbert's names are BertModel's); ``text_proj.*``
and ``temp`` as they are. Ignored: text layers >= fusion_layer (fusion, with cross-attention),
``text_encoder.cls.*`` (MLM head), ``itm_head.*``, the momentum copies ``*_m.*``, the queues
(``image_queue``, ``text_queue``, ``idx_queue``, ``queue_ptr``), the ``position_ids`` buffer. Any other
key, a missing weight or a wrong shape is a ConfigError naming the file and the keys.

Pitfalls handled:

* ``options: {image_size: N}`` (default 256, the pretraining size; retrieval fine-tuning used 384): a
  checkpoint of another size has another ``pos_embed`` grid, interpolated bicubically over the grid with
  the CLS entry kept, as ALBEF's own ``interpolate_pos_embed`` does.
* ALBEF's tokenizer (its ``models/tokenization_bert.py``) writes a sentence as ``[CLS] x`` without
  ``[SEP]``, and its datasets lower-case captions and drop punctuation (``pre_caption``): transformers'
  tokenizer alone would append ``[SEP]`` and keep the "." of "a photo of a dog.". The BERT vocabulary
  (``options: {tokenizer: <hub id or local dir>}``, default ``bert-base-uncased``) is read from the
  Hugging Face cache; set ``HF_HUB_OFFLINE=1`` without network. transformers 5 silently returns a
  5-token tokenizer when it finds no vocabulary: the vocabulary size is checked against the model's.
* ALBEF clamps ``temp`` to [0.001, 0.5] before use; so does :meth:`AlbefAdapter.logit_scale`.
* timm's ``Attention`` may use fused SDPA (no probabilities): recording swaps it for an explicit forward
  from the same weights. ALBEF's test transform squashes images to a square; :attr:`geometry`
  (short-side resize, center crop) equals it for square images only.
"""

from __future__ import annotations

import contextlib
import json
import re
from functools import partial
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
from rationality.models._released import load_released, read_state_dict
from rationality.models._tokenizers import bert_tokenizer_from_vocab, check_tokenizer
from rationality.models.base import (
    AttentionRecording, ModelFamily, ModelSpec, VisionLanguageAdapter, register_adapter, swapped_attention,
)

CONFIG_DIR = Path(__file__).parent / "configs"
#: ALBEF normalises images with CLIP's statistics (its dataset/__init__.py).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMP_RANGE = (0.001, 0.5)
OPTIONS = ("allow_unsafe_pickle", "image_size", "tokenizer")
#: Released keys that ITC does not use (fusion layers are recognised by their index).
IGNORED_KEYS = re.compile(r"(itm_head|image_queue|text_queue|idx_queue|queue_ptr|[a-z_]+_m)(\.|$)"
                          r"|text_encoder\.(bert\.)?(cls\.|embeddings\.position_ids$)")
TEXT_KEY = re.compile(r"text_encoder\.(bert\.)?(?P<rest>(embeddings|encoder\.layer\.(?P<layer>\d+))\..+)")


def released_to_ours(key: str, text_layers: int) -> str | None:
    """Our state-dict key for a released ALBEF key; None for a key ITC does not use.

    Keys of no known kind come back unchanged (the caller reports them as unexpected).
    """
    if IGNORED_KEYS.match(key):
        return None
    if key.startswith("visual_encoder."):
        return "vision.vit." + key.removeprefix("visual_encoder.")
    if key.startswith("vision_proj."):
        return "vision.proj." + key.removeprefix("vision_proj.")
    text = TEXT_KEY.fullmatch(key)
    if text is None:
        return key
    if text["layer"] is not None and int(text["layer"]) >= text_layers:
        return None
    return "text." + text["rest"]


def clean_caption(text: str) -> str:
    """ALBEF's ``pre_caption``: lower-case, drop ``,.'!?"()*#:;~``, ``-`` and ``/`` to spaces."""
    text = re.sub(r"[,.'!?\"()*#:;~]", "", text.lower()).replace("-", " ").replace("/", " ")
    return re.sub(r"\s+", " ", text).strip()


def read_config(name: str) -> dict:
    """The architecture ``configs/<name>.json`` (keys: embed_dim, temp, vision, text, tokenizer, max_text_length)."""
    path = CONFIG_DIR / f"{name}.json"
    if "albef" not in name or not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*albef*.json"))
        raise ConfigError(f"unknown ALBEF model {name!r}; known: {known}")
    return json.loads(path.read_text())


def load_tokenizer(source: str) -> BertTokenizer:
    """A vocabulary file in the configs folder (or any path to one), else a hub id or local directory."""
    vocab = CONFIG_DIR / source
    try:
        if vocab.is_file():
            return bert_tokenizer_from_vocab(vocab)
        return check_tokenizer(BertTokenizer.from_pretrained(source), source)
    except OSError as exc:
        raise ConfigError(f"could not load the BERT tokenizer {source!r}: {exc}. It is read from the Hugging Face "
                          f"cache; set HF_HUB_OFFLINE=1 without network, or options: {{tokenizer: <local dir>}}"
                          ) from exc


class _ImageTower(nn.Module):
    """ALBEF's image encoder and ``vision_proj``: pixels [B, 3, H, W] -> embeddings [B, E]."""

    def __init__(self, vit: VisionTransformer, proj: nn.Linear) -> None:
        super().__init__()
        self.vit = vit
        self.proj = proj

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.vit.forward_features(pixels)[:, 0])  # CLS token after the final norm


class _RecordingAttention(nn.Module):
    """A timm ``Attention``'s forward, computed explicitly; ``probabilities_sink`` gets [B, heads, T, T]."""

    def __init__(self, attention: nn.Module, probabilities_sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.attention = attention
        self.probabilities_sink = probabilities_sink

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attention recording supports unmasked self-attention only")
        attn = self.attention
        batch, length, _ = x.shape
        q, k, v = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        probabilities = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.probabilities_sink.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, length, -1)
        return attn.proj(getattr(attn, "norm", nn.Identity())(mixed))


@register_adapter("albef")
class AlbefAdapter(VisionLanguageAdapter):
    """ALBEF's ITC towers: a timm ViT and a transformers BertModel (text layers only)."""

    families = (ModelFamily("ALBEF (ITC)", "albef-vit-b-16", "a released checkpoint file (ALBEF.pth, mscoco.pth, ...)",
                            "cls", frozenset(), "rationality-tiny-albef"),)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        unknown = sorted(set(spec.options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"albef model options {unknown} are unknown; known: {list(OPTIONS)}")
        config = read_config(spec.name)
        vision, text = config["vision"], config["text"]
        size = int(spec.options.get("image_size", vision["image_size"]))
        if size % vision["patch_size"]:
            raise ConfigError(f"ALBEF image_size {size} is not a multiple of the patch size {vision['patch_size']}")
        self.tokenizer = load_tokenizer(spec.options.get("tokenizer", config["tokenizer"]))
        if len(self.tokenizer) != text["vocab_size"]:  # transformers 5 builds a 5-token one if it finds no files
            raise ConfigError(f"the BERT tokenizer {self.tokenizer.name_or_path!r} has {len(self.tokenizer)} tokens, "
                              f"model {spec.name!r} {text['vocab_size']}: was its vocabulary found (HF cache, path)?")
        if spec.pretrained is None:
            torch.manual_seed(spec.seed)
        vit = VisionTransformer(
            img_size=size, patch_size=vision["patch_size"], embed_dim=vision["width"], depth=vision["layers"],
            num_heads=vision["heads"], mlp_ratio=vision["mlp_ratio"], qkv_bias=True, num_classes=0,
            global_pool="token", class_token=True, norm_layer=partial(nn.LayerNorm, eps=vision["layer_norm_eps"]))
        self.vision = _ImageTower(vit, nn.Linear(vision["width"], config["embed_dim"]))
        bert = {k: v for k, v in text.items() if k not in ("num_hidden_layers", "fusion_layer")}
        self.text = BertModel(BertConfig(**bert, num_hidden_layers=text["fusion_layer"], attn_implementation="eager"),
                              add_pooling_layer=False)
        self.text_proj = nn.Linear(text["hidden_size"], config["embed_dim"])
        self.temp = nn.Parameter(torch.tensor(float(config["temp"])))
        self.max_text_length = int(config["max_text_length"])
        self.geometry = Geometry(resize=size, crop=size)
        self.grid = tuple(vit.patch_embed.grid_size)
        self.num_blocks = len(vit.blocks)
        self.native_mean, self.native_std = CLIP_MEAN, CLIP_STD
        self._blocks = list(vit.blocks)
        if spec.pretrained is not None:
            self.load_released(Path(spec.pretrained), bool(spec.options.get("allow_unsafe_pickle", False)))

    def load_released(self, path: Path, allow_unsafe_pickle: bool = False) -> None:
        """Load the ITC weights of a released ALBEF checkpoint (see the module docstring for the mapping).

        Raises:
            ConfigError: naming the file and the first keys that are unexpected, missing or misshapen.
        """
        released = read_state_dict(path, "ALBEF", "the files are linked from the README of github.com/salesforce/ALBEF",
                                   allow_unsafe_pickle)
        load_released(self, released, path, "ALBEF", partial(released_to_ours, text_layers=self.text.config.num_hidden_layers),
                      "vision.vit.pos_embed", self.grid,
                      "vision.vit.* <- visual_encoder.*, vision.proj.* <- vision_proj.*, text.* <- text_encoder.[bert.]*")

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ALBEF's text input: ``[CLS]`` + WordPiece tokens of the cleaned caption, no ``[SEP]``.

        Returns:
            input_ids and attention_mask, both [len(prompts), L] (L: the longest, <= max_text_length).

        Raises:
            ConfigError: for a prompt longer than ``max_text_length`` tokens (never truncated).
        """
        tok = self.tokenizer
        rows = [[tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(clean_caption(p)))
                for p in prompts]
        too_long = [p for p, row in zip(prompts, rows) if len(row) > self.max_text_length]
        if too_long:  # ALBEF's code truncates silently; a cut class name would change the class
            raise ConfigError(f"prompt {too_long[0]!r} has more than ALBEF's {self.max_text_length} text tokens")
        width = max(map(len, rows))
        ids = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        return ids, mask

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = (t.to(self.temp.device) for t in self.tokenize(prompts))
        return self.text_proj(self.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])

    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temp.clamp(*TEMP_RANGE)

    def image_tower(self) -> nn.Module:
        return self.vision

    def recording_attention(self) -> contextlib.AbstractContextManager[AttentionRecording]:
        return swapped_attention(self._blocks, _RecordingAttention)
