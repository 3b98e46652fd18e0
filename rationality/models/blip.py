"""BLIP (ViT-B/16 retrieval models through Hugging Face transformers) behind the adapter contract.

``ModelSpec.name`` is a transformers BLIP retrieval checkpoint id (``Salesforce/blip-itm-base-coco``,
the paper's BLIP ViT-B/16) or a project architecture (``rationality-tiny-blip``: a ``BlipConfig``
JSON in ``rationality/models/configs/``, tokenised with the tiny WordPiece vocabulary shipped next
to it). Weights, by ``ModelSpec.pretrained``:

* ``"hub"``: ``BlipForImageTextRetrieval.from_pretrained(name)``, read from the Hugging Face cache
  (``HF_HOME``; ``options: {cache_dir: ...}`` chooses another), fetched once where there is network;
  set ``HF_HUB_OFFLINE=1`` on machines without;
* a local directory written by ``save_pretrained`` (model, and tokenizer unless ``options.tokenizer``);
* ``None``: random initialisation seeded by ``ModelSpec.seed``, architecture from the project JSON or
  from ``BlipConfig.from_pretrained(name)`` (the cache again).

Options: ``cache_dir``; ``tokenizer`` (a directory or hub id overriding the tokenizer);
``image_size`` (input side other than the model's, with interpolated position embeddings);
``temperature`` (see below).

Pitfalls handled:

* The similarity BLIP's ITC was trained with is cosine / temp, but transformers keeps no ``temp``:
  its retrieval model with ``use_itm_head=False`` returns the bare cosine (the conversion started
  from BLIP's ``blip_itm`` model, which has none). :meth:`BlipAdapter.logit_scale` is therefore
  1 / ``options.temperature``, default 0.07 (BLIP's initial value; the released retrieval
  checkpoints' learned value is not in the transformers files). It does not change predictions but
  does change prompt-head heatmaps, so it is a named option, limited to BLIP's clamp [0.001, 0.5].
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
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval

from rationality.data.geometry import Geometry
from rationality.errors import ConfigError
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
OPTIONS = ("cache_dir", "image_size", "temperature", "tokenizer")


def project_configs() -> list[str]:
    """Names of the project's BLIP architectures (JSON files in ``configs/`` of model_type blip)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json")
                  if json.loads(path.read_text()).get("model_type") == "blip")


def _hub_error(what: str, source: str, exc: Exception) -> ConfigError:
    return ConfigError(f"could not load the BLIP {what} of {source!r} ({exc}); a name must be a transformers BLIP "
                       f"retrieval id such as 'Salesforce/blip-itm-base-coco' in the Hugging Face cache (HF_HOME, "
                       f"options.cache_dir; HF_HUB_OFFLINE=1 without network) or a project config {project_configs()}")


def load_model(spec: ModelSpec) -> BlipForImageTextRetrieval:
    """The retrieval model of ``spec``: random (seeded), from the hub cache, or from a local directory."""
    cache_dir = spec.options.get("cache_dir")
    if spec.pretrained is None:
        if spec.name.startswith(PROJECT_PREFIX):
            if spec.name not in project_configs():
                raise ConfigError(f"unknown BLIP project config {spec.name!r}; project configs: {project_configs()}")
            config = BlipConfig.from_dict(json.loads((CONFIG_DIR / f"{spec.name}.json").read_text()))
        else:
            try:
                config = BlipConfig.from_pretrained(spec.name, cache_dir=cache_dir)
            except OSError as exc:
                raise _hub_error("config", spec.name, exc) from exc
        config._attn_implementation = "eager"
        torch.manual_seed(spec.seed)
        return BlipForImageTextRetrieval(config).float()
    if spec.pretrained != "hub" and not Path(spec.pretrained).is_dir():
        raise ConfigError(f"BLIP pretrained={spec.pretrained!r} is neither 'hub', None, nor an existing directory "
                          f"written by save_pretrained")
    source = spec.name if spec.pretrained == "hub" else spec.pretrained
    try:
        model = BlipForImageTextRetrieval.from_pretrained(source, cache_dir=cache_dir, attn_implementation="eager")
    except OSError as exc:
        raise _hub_error("weights", source, exc) from exc
    return model.float()


def load_tokenizer(spec: ModelSpec) -> Any:
    """``options.tokenizer``, the shipped tiny vocabulary for project configs, else the model's own."""
    source = spec.options.get("tokenizer")
    if source is None and spec.name.startswith(PROJECT_PREFIX):
        return bert_tokenizer_from_vocab(TINY_VOCAB)
    source = source or (spec.name if spec.pretrained in (None, "hub") else spec.pretrained)
    try:
        return check_tokenizer(AutoTokenizer.from_pretrained(source, cache_dir=spec.options.get("cache_dir")), source)
    except OSError as exc:
        raise _hub_error("tokenizer", source, exc) from exc


@register_adapter("blip")
class BlipAdapter(VisionLanguageAdapter):
    """A transformers ``BlipForImageTextRetrieval`` used through its ITC (unimodal) embeddings."""

    families = (ModelFamily("BLIP (ITC)", "Salesforce/blip-itm-base-coco",
                            "hub (the Hugging Face cache) or a save_pretrained directory", "cls", frozenset(),
                            "rationality-tiny-blip"),)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        unknown = set(spec.options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"unknown BLIP options {sorted(unknown)}; known: {list(OPTIONS)}")
        temperature = float(spec.options.get("temperature", 0.07))
        if not 0.001 <= temperature <= 0.5:
            raise ConfigError(f"BLIP temperature must lie in BLIP's clamp [0.001, 0.5], got {temperature}")
        self.model = load_model(spec)
        self.tokenizer = load_tokenizer(spec)
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
