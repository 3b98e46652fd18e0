"""BLIP ViT-B/16 (Li et al. 2022) behind the adapter contract, on transformers' BLIP retrieval model.

``ModelSpec.name`` is a transformers BLIP retrieval checkpoint id (``Salesforce/blip-itm-base-coco``)
or a project architecture: a ``BlipConfig`` JSON in ``rationality/models/configs/``, ``blip-vit-b-16``
(the original release's ViT-B/16 base model: 224 px, BERT-base text encoder) or ``rationality-tiny-blip``
(tests, tokenised with the tiny WordPiece vocabulary shipped next to it). Weights, by
``ModelSpec.pretrained``:

* a file: a checkpoint of the original release (github.com/salesforce/BLIP), ``model_base.pth``
  (the pretrained ViT-B/16 base model the paper uses) or a fine-tuned one, loaded into the project
  architecture ``name`` (see "The original release" below);
* ``"hub"``: ``BlipForImageTextRetrieval.from_pretrained(name)``, read from the Hugging Face cache
  (``HF_HOME``; ``options: {cache_dir: ...}`` chooses another), fetched once where there is network;
  set ``HF_HUB_OFFLINE=1`` on machines without;
* a local directory written by ``save_pretrained`` (model, and tokenizer unless ``options.tokenizer``);
* ``None``: random initialisation seeded by ``ModelSpec.seed``, architecture from the project JSON or
  from ``BlipConfig.from_pretrained(name)`` (the cache again).

Options: ``cache_dir``; ``tokenizer`` (a directory, hub id or vocabulary file overriding the tokenizer);
``image_size`` (input side other than the model's, with interpolated position embeddings);
``temperature`` (Hugging Face weights only, see below); ``allow_unsafe_pickle`` (a release file that
``torch.load(weights_only=True)`` refuses: trusted sources only).

The original release: its files hold BLIP's own module names, mapped to transformers' as
``visual_encoder.cls_token`` -> ``vision_model.embeddings.class_embedding``, ``.pos_embed`` ->
``.position_embedding`` (resampled to the model's grid as BLIP's ``load_checkpoint`` does),
``.patch_embed.proj.*`` -> ``.patch_embedding.*``, ``.blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}`` -> ``encoder.layers.N.{layer_norm1, self_attn.qkv, self_attn.projection,
layer_norm2, mlp.fc1, mlp.fc2}``, ``.norm`` -> ``post_layernorm``; ``text_encoder.*`` (BLIP's ``med``
BERT, self- and cross-attention per layer), ``vision_proj``, ``text_proj`` and ``itm_head`` keep their
names. Ignored: the momentum copies ``*_m``, the queues, the caption decoder ``text_decoder.*``, the
``position_ids`` buffer. ``temp``, the learned ITC temperature, becomes :meth:`BlipAdapter.logit_scale`
(clamped to [0.001, 0.5] as BLIP does). The tokenizer is BLIP's: ``bert-base-uncased`` (the Hugging
Face cache, or ``options.tokenizer``) with its ``[DEC]`` and ``[ENC]`` tokens added (30,524 tokens).

Pitfalls handled:

* The similarity BLIP's ITC was trained with is cosine / temp, but transformers keeps no ``temp``:
  its retrieval model with ``use_itm_head=False`` returns the bare cosine (the conversion started
  from BLIP's ``blip_itm`` model, which has none). With Hugging Face weights,
  :meth:`BlipAdapter.logit_scale` is therefore 1 / ``options.temperature``, default 0.07 (BLIP's
  initial value). It does not change predictions but does change prompt-head heatmaps, so it is a
  named option, limited to BLIP's clamp [0.001, 0.5]. A release file carries its own ``temp``.
* BLIP's ViT normalises with LayerNorm eps 1e-6, transformers' BLIP config defaults to 1e-5: the
  ``blip-vit-b-16`` architecture sets BLIP's.
* Text embeddings use the ``[CLS]`` output of the unimodal text encoder, as BLIP's ITC (the first
  token is *not* replaced by ``[ENC]``, which only the ITM path does). Prompts longer than BLIP's
  35 retrieval tokens raise instead of being truncated.
* transformers 5 loads in the checkpoint's dtype by default: models are cast to fp32.
* transformers 5's tokenizer pitfalls (an ignored ``vocab_file=``, a silent 5-token tokenizer
  offline) are guarded in :mod:`rationality.models._tokenizers`.
* ``get_image_features`` returns a tensor in 4.x and an output object in 5.x: not used.
* Attention is recorded by a forward hook on each vision layer's attention dropout, whose output is
  exactly the post-softmax tensor multiplied with the values (dropout is the identity in eval
  mode), in transformers 4.x and 5.x alike and whatever ``output_attentions`` says.
* BLIP's own preprocessing resizes to a square (aspect not kept); the project's geometry is a
  short-side resize and center crop at the model's input size.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import AutoTokenizer, BertTokenizer, BlipConfig, BlipForImageTextRetrieval

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
from rationality.models._released import load_released, read_state_dict
from rationality.models._tokenizers import bert_tokenizer_from_vocab, check_tokenizer
from rationality.models.base import (
    AttentionRecording, ModelFamily, ModelSpec, VisionLanguageAdapter, register_adapter,
)

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_VOCAB = CONFIG_DIR / "rationality-tiny-bert-vocab.txt"
PROJECT_PREFIX = "rationality-"
#: BLIP's image processor statistics (OpenAI CLIP's).
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Text length of BLIP's retrieval training and evaluation (``max_length=35``).
MAX_TEXT_TOKENS = 35
OPTIONS = ("allow_unsafe_pickle", "cache_dir", "image_size", "temperature", "tokenizer")
#: BLIP clamps its learned temperature to this range before use.
TEMP_RANGE = (0.001, 0.5)
#: The original release's tokenizer: this BERT vocabulary plus BLIP's ``[DEC]`` and ``[ENC]``.
RELEASE_TOKENIZER = "bert-base-uncased"
RELEASE_ADDED_TOKENS = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}
#: Released keys that ITC does not use, and ``temp`` (read apart).
IGNORED_KEYS = re.compile(r"(visual_encoder_m|vision_proj_m|text_encoder_m|text_proj_m|text_decoder)\."
                          r"|(image_queue|text_queue|idx_queue|queue_ptr|ptr_queue|temp)$"
                          r"|text_encoder\.embeddings\.position_ids$")
VISION_BLOCK_KEY = re.compile(r"blocks\.(?P<index>\d+)\.(?P<part>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
                              r"\.(?P<kind>weight|bias)")
VISION_BLOCK_PARTS = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                      "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
VISION_KEYS = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}


def project_configs() -> list[str]:
    """Names of the project's BLIP architectures (JSON files in ``configs/`` of model_type blip)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json")
                  if json.loads(path.read_text()).get("model_type") == "blip")


def released_to_ours(key: str) -> str | None:
    """transformers' name for a key of BLIP's original release; None for a key ITC does not use.

    Keys of no known kind come back unchanged (the loader reports them as unexpected).
    """
    if IGNORED_KEYS.match(key):
        return None
    if not key.startswith("visual_encoder."):
        return key  # text_encoder.*, vision_proj.*, text_proj.*, itm_head.*: transformers' names
    rest = key.removeprefix("visual_encoder.")
    block = VISION_BLOCK_KEY.fullmatch(rest)
    if block is not None:
        return f"vision_model.encoder.layers.{block['index']}.{VISION_BLOCK_PARTS[block['part']]}.{block['kind']}"
    return f"vision_model.{VISION_KEYS[rest]}" if rest in VISION_KEYS else key


def _hub_error(what: str, source: str, exc: Exception) -> ConfigError:
    return ConfigError(f"could not load the BLIP {what} of {source!r} ({exc}); a name must be a transformers BLIP "
                       f"retrieval id such as 'Salesforce/blip-itm-base-coco' in the Hugging Face cache (HF_HOME, "
                       f"options.cache_dir; HF_HUB_OFFLINE=1 without network) or a project config {project_configs()}")


def _is_project_config(name: str) -> bool:
    """Whether ``name`` asks for a project architecture (a JSON in ``configs/``), known or not."""
    return name.startswith(PROJECT_PREFIX) or name in project_configs()


def _is_release_file(pretrained: str | None) -> bool:
    return pretrained not in (None, "hub") and Path(pretrained).is_file()


def load_model(spec: ModelSpec) -> BlipForImageTextRetrieval:
    """The retrieval model of ``spec``: random (seeded) or in the project architecture for a release
    file (whose weights :meth:`BlipAdapter.load_release` loads), from the hub cache, or from a
    local directory."""
    cache_dir = spec.options.get("cache_dir")
    if spec.pretrained is None or _is_release_file(spec.pretrained):
        if _is_project_config(spec.name):
            if spec.name not in project_configs():
                raise ConfigError(f"unknown BLIP project config {spec.name!r}; project configs: {project_configs()}")
            config = BlipConfig.from_dict(json.loads((CONFIG_DIR / f"{spec.name}.json").read_text()))
        elif spec.pretrained is not None:
            raise ConfigError(f"BLIP pretrained={spec.pretrained!r} is a file, an original release checkpoint, which "
                              f"loads into a project architecture: name must be one of {project_configs()}, not "
                              f"{spec.name!r}")
        else:
            try:
                config = BlipConfig.from_pretrained(spec.name, cache_dir=cache_dir)
            except OSError as exc:
                raise _hub_error("config", spec.name, exc) from exc
        config._attn_implementation = "eager"
        torch.manual_seed(spec.seed)
        return BlipForImageTextRetrieval(config).float()
    if spec.pretrained != "hub" and not Path(spec.pretrained).is_dir():
        raise ConfigError(f"BLIP pretrained={spec.pretrained!r} is neither 'hub', None, an existing directory written "
                          f"by save_pretrained, nor a checkpoint file of BLIP's original release")
    source = spec.name if spec.pretrained == "hub" else spec.pretrained
    try:
        model = BlipForImageTextRetrieval.from_pretrained(source, cache_dir=cache_dir, attn_implementation="eager")
    except OSError as exc:
        raise _hub_error("weights", source, exc) from exc
    return model.float()


def load_tokenizer(spec: ModelSpec) -> Any:
    """``options.tokenizer``, the shipped tiny vocabulary for ``rationality-`` configs, BLIP's own
    (:data:`RELEASE_TOKENIZER` with :data:`RELEASE_ADDED_TOKENS`) for the other project configs,
    else the model's own."""
    source = spec.options.get("tokenizer")
    if spec.name.startswith(PROJECT_PREFIX):
        return bert_tokenizer_from_vocab(Path(source) if source else TINY_VOCAB)
    if _is_project_config(spec.name):
        return _release_tokenizer(source or RELEASE_TOKENIZER)
    source = source or (spec.name if spec.pretrained in (None, "hub") else spec.pretrained)
    try:
        return check_tokenizer(AutoTokenizer.from_pretrained(source, cache_dir=spec.options.get("cache_dir")), source)
    except OSError as exc:
        raise _hub_error("tokenizer", source, exc) from exc


def _release_tokenizer(source: str) -> BertTokenizer:
    """BLIP's ``init_tokenizer``: a BERT vocabulary (a file, a local directory or a hub id in the
    Hugging Face cache) with ``[DEC]`` and ``[ENC]`` added."""
    try:
        tokenizer = (bert_tokenizer_from_vocab(Path(source)) if Path(source).is_file()
                     else check_tokenizer(BertTokenizer.from_pretrained(source), source))
    except OSError as exc:
        raise ConfigError(f"could not load the BERT tokenizer {source!r} of BLIP's release: {exc}. It is read from "
                          f"the Hugging Face cache; set HF_HUB_OFFLINE=1 without network, or options: "
                          f"{{tokenizer: <local dir or vocab.txt>}}") from exc
    tokenizer.add_special_tokens(RELEASE_ADDED_TOKENS)
    return tokenizer


@register_adapter("blip")
class BlipAdapter(VisionLanguageAdapter):
    """A transformers ``BlipForImageTextRetrieval`` used through its ITC (unimodal) embeddings."""

    families = (ModelFamily("BLIP (ITC)", "blip-vit-b-16 (the original release), Salesforce/blip-itm-base-coco",
                            "the original release's model_base.pth; or hub (the Hugging Face cache) or a "
                            "save_pretrained directory", "cls", frozenset(),
                            "rationality-tiny-blip"),)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        unknown = set(spec.options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"unknown BLIP options {sorted(unknown)}; known: {list(OPTIONS)}")
        release = _is_release_file(spec.pretrained)
        if release and "temperature" in spec.options:
            raise ConfigError(f"BLIP checkpoint {spec.pretrained} carries its learned temperature (temp): "
                              f"options.temperature applies to Hugging Face weights only")
        temperature = float(spec.options.get("temperature", 0.07))
        if not TEMP_RANGE[0] <= temperature <= TEMP_RANGE[1]:
            raise ConfigError(f"BLIP temperature must lie in BLIP's clamp [0.001, 0.5], got {temperature}")
        self.model = load_model(spec)
        self.tokenizer = load_tokenizer(spec)
        vocabulary = self.model.config.text_config.vocab_size
        if len(self.tokenizer) > vocabulary:
            raise ConfigError(f"the BLIP tokenizer of {spec.name!r} has {len(self.tokenizer)} tokens, its text encoder "
                              f"{vocabulary}: options.tokenizer does not belong to this model")
        self.register_buffer("_inverse_temperature", torch.tensor(1.0 / temperature), persistent=False)
        vision = self.model.config.vision_config
        size = int(spec.options.get("image_size", vision.image_size))
        self._interpolate = size != vision.image_size
        self.geometry = Geometry(resize=size, crop=size)
        self.grid = (size // vision.patch_size, size // vision.patch_size)
        self._attention_dropouts = [layer.self_attn.dropout for layer in self.model.vision_model.encoder.layers]
        if not all(isinstance(dropout, nn.Dropout) for dropout in self._attention_dropouts):
            raise ConfigError(f"BLIP model {spec.name!r}: vision attention has no dropout module to record from")
        self.num_blocks = len(self._attention_dropouts)
        self.native_mean, self.native_std = BLIP_MEAN, BLIP_STD
        if release:
            self.load_release(Path(spec.pretrained), bool(spec.options.get("allow_unsafe_pickle", False)))

    def load_release(self, path: Path, allow_unsafe_pickle: bool = False) -> None:
        """Load a checkpoint of BLIP's original release and its ``temp`` (see the module docstring).

        Raises:
            ConfigError: naming the file and the first keys that are unexpected, missing or misshapen,
                or a file without ``temp``.
        """
        released = read_state_dict(path, "BLIP", "model_base.pth is linked from the README of "
                                   "github.com/salesforce/BLIP", allow_unsafe_pickle)
        if "temp" not in released or released["temp"].numel() != 1:
            raise ConfigError(f"BLIP checkpoint {path} has no learned temperature 'temp' (a scalar)")
        vision = self.model.config.vision_config
        native_grid = (vision.image_size // vision.patch_size,) * 2
        load_released(self.model, released, path, "BLIP", released_to_ours, "vision_model.embeddings.position_embedding",
                      native_grid, "vision_model.* <- visual_encoder.*, text_encoder.*, vision_proj.*, text_proj.*, "
                      "itm_head.* as they are")
        temperature = float(released["temp"].reshape(()).clamp(*TEMP_RANGE))
        self._inverse_temperature.fill_(1.0 / temperature)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """ITC image embeddings [B, D] from normalised pixels [B, 3, H, W]."""
        hidden = self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=self._interpolate)
        return self.model.vision_proj(hidden.last_hidden_state[:, 0])

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """ITC text embeddings [N, D]: the projected ``[CLS]`` output of the unimodal text encoder."""
        tokens = self.tokenizer(prompts, padding="longest", return_tensors="pt")
        if tokens.input_ids.shape[1] > MAX_TEXT_TOKENS:
            longest = prompts[int(tokens.attention_mask.sum(dim=1).argmax())]
            raise ConfigError(f"prompt {longest!r} has more than BLIP's {MAX_TEXT_TOKENS} text tokens")
        device = self._inverse_temperature.device
        hidden = self.model.text_encoder(input_ids=tokens.input_ids.to(device),
                                         attention_mask=tokens.attention_mask.to(device))
        return self.model.text_proj(hidden.last_hidden_state[:, 0])

    def logit_scale(self) -> torch.Tensor:
        """1 / temp (0-dim): cosine / temp is BLIP's ITC similarity."""
        return self._inverse_temperature

    def image_tower(self) -> nn.Module:
        """The vision transformer and its ITC projection: everything :meth:`encode_image` uses."""
        return nn.ModuleDict({"vision_model": self.model.vision_model, "vision_proj": self.model.vision_proj})

    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[AttentionRecording]:
        probabilities = AttentionRecording()
        handles = [dropout.register_forward_hook(lambda _module, _inputs, output: probabilities.append(output))
                   for dropout in self._attention_dropouts]
        try:
            yield probabilities
        finally:
            for handle in handles:
                handle.remove()
