"""The BLIP adapter on its tiny random-init config: BLIP's own ITC numbers, attention recording,
local directories and error messages. No downloads (the hub path is exercised in offline mode)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipConfig, BlipForImageTextRetrieval

from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch, list_explainers
from rationality.models import ImageClassifier, ModelSpec, PromptHead, create_adapter
from rationality.models._tokenizers import bert_tokenizer_from_vocab
from rationality.models.blip import CONFIG_DIR, load_tokenizer, released_to_ours

from tests.conftest import TINY_ADAPTER_SPECS

SPEC = TINY_ADAPTER_SPECS["blip"]
PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle."]


@pytest.fixture(scope="module")
def adapter():
    return create_adapter(dict(SPEC))


def _pixels(n: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _blip_cosines(model: BlipForImageTextRetrieval, tokenizer, pixels: torch.Tensor) -> torch.Tensor:
    """BLIP's own ITC cosine [B, N] (``use_itm_head=False``)."""
    tokens = tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels,
                     use_itm_head=False).itm_score


def test_geometry_and_statistics(adapter) -> None:
    assert (adapter.geometry.resize, adapter.geometry.crop, adapter.grid, adapter.num_blocks) == (64, 64, (8, 8), 3)
    assert adapter.native_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert adapter.native_std == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_tiny_tokenizer_knows_the_prompt_words(adapter) -> None:
    tokenizer = adapter.tokenizer
    ids = tokenizer(PROMPTS[0]).input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids and len(ids) == 16  # [CLS] a p##h##o##t##o o##f a d##i##s##k . [SEP]


def test_prompt_logits_are_blip_cosine_over_temperature(adapter) -> None:
    pixels = _pixels(2, seed=0)
    head = PromptHead.from_prompts(adapter, PROMPTS)
    with torch.no_grad():
        logits = ImageClassifier(adapter, head)(pixels)
    expected = _blip_cosines(adapter.model, adapter.tokenizer, pixels) / 0.07
    assert adapter.logit_scale().shape == () and adapter.logit_scale().item() == pytest.approx(1 / 0.07)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.std() > 0.1  # the comparison is not between constants


def test_temperature_option() -> None:
    assert create_adapter({**SPEC, "options": {"temperature": 0.05}}).logit_scale().item() == pytest.approx(20.0)
    with pytest.raises(ConfigError, match=r"\[0.001, 0.5\]"):
        create_adapter({**SPEC, "options": {"temperature": 1.0}})


def test_image_tower_holds_everything_encode_image_uses(adapter) -> None:
    tower = adapter.image_tower()
    assert {name.split(".")[0] for name in tower.state_dict()} == {"vision_model", "vision_proj"}
    parameters = list(adapter.parameters())
    with torch.enable_grad():
        gradients = torch.autograd.grad(adapter.encode_image(_pixels(1, seed=1)).sum(), parameters, allow_unused=True)
    used = {id(p) for p, g in zip(parameters, gradients) if g is not None}
    assert used == {id(p) for p in tower.parameters()}


def _layer_input_and_recording(adapter, layer_index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layer = adapter.model.vision_model.encoder.layers[layer_index]
    inputs: list[torch.Tensor] = []
    handle = layer.self_attn.register_forward_pre_hook(
        lambda _m, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad(), adapter.recording_attention() as probabilities:
            adapter.encode_image(_pixels(2, seed=2))
    finally:
        handle.remove()
    return inputs[0], probabilities


def test_recorded_attention_equals_recomputation(adapter) -> None:
    layer_input, probabilities = _layer_input_and_recording(adapter, layer_index=1)
    attention = adapter.model.vision_model.encoder.layers[1].self_attn
    batch, tokens, width = layer_input.shape
    heads = attention.num_heads
    q, k, _ = F.linear(layer_input, attention.qkv.weight, attention.qkv.bias).reshape(
        batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    expected = ((q @ k.transpose(-2, -1)) / (width // heads) ** 0.5).softmax(dim=-1)
    torch.testing.assert_close(probabilities[1], expected, atol=1e-6, rtol=0)
    assert (probabilities[1] - probabilities[0]).abs().max() > 1e-4  # a layer's own attention


class _ExplicitAttention(nn.Module):
    """BLIP's vision self-attention written out from its ``qkv`` / ``projection`` weights, keeping
    the probabilities: an independent route to the attention and its gradient."""

    def __init__(self, attention: nn.Module, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.attention, self.sink = attention, sink

    def forward(self, hidden_states: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, width = hidden_states.shape
        heads = self.attention.num_heads
        q, k, v = self.attention.qkv(hidden_states).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        probabilities = ((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(dim=-1)
        self.sink.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, tokens, width)
        return self.attention.projection(mixed), probabilities


def test_heatmaps_equal_an_independent_attention_route(adapter) -> None:
    classifier = ImageClassifier(adapter, PromptHead.from_prompts(adapter, PROMPTS)).eval()
    explainers = [create_explainer(name) for name in list_explainers()]
    pixels, labels = _pixels(3, seed=3), torch.tensor([0, 2, 1])
    logits, heatmaps = explain_batch(classifier, pixels, labels, explainers)

    attentions: list[torch.Tensor] = []
    layers = list(adapter.model.vision_model.encoder.layers)
    originals = [layer.self_attn for layer in layers]
    try:
        for layer, original in zip(layers, originals):
            layer.self_attn = _ExplicitAttention(original, attentions)
        with torch.enable_grad():
            own_logits = classifier(pixels.clone().requires_grad_(True))
            gradients = torch.autograd.grad(own_logits.gather(1, labels.view(-1, 1)).sum(), attentions)
    finally:
        for layer, original in zip(layers, originals):
            layer.self_attn = original
    expected = torch.stack([e([a.detach() for a in attentions], list(gradients)) for e in explainers], dim=1)
    torch.testing.assert_close(logits, own_logits.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(heatmaps, expected.reshape(heatmaps.shape), atol=1e-5, rtol=0)
    assert all(g.abs().max() > 0 for g in gradients)


def test_recording_stops_after_an_exception(adapter) -> None:
    with pytest.raises(RuntimeError, match="boom"), adapter.recording_attention() as probabilities:
        with torch.no_grad():
            adapter.encode_image(_pixels(1, seed=4))
        raise RuntimeError("boom")
    with torch.no_grad():
        adapter.encode_image(_pixels(1, seed=4))
    assert len(probabilities) == adapter.num_blocks


def test_image_size_option_interpolates_position_embeddings(adapter) -> None:
    larger = create_adapter({**SPEC, "input_size": 96, "patch_size": 8, "options": {"image_size": 96}})
    assert larger.geometry.crop == 96 and larger.grid == (12, 12)
    with torch.no_grad(), larger.recording_attention() as probabilities:
        embedding = larger.encode_image(_pixels(2, seed=5, size=96))
    assert embedding.shape == (2, 32) and probabilities[0].shape == (2, 4, 145, 145)
    same = create_adapter({**SPEC, "options": {"image_size": 64}})
    with torch.no_grad():
        torch.testing.assert_close(same.encode_image(_pixels(1, seed=6)), adapter.encode_image(_pixels(1, seed=6)),
                                   atol=0, rtol=0)


def test_local_directory_weights_and_tokenizer(tmp_path) -> None:
    config = BlipConfig.from_dict(json.loads((CONFIG_DIR / "rationality-tiny-blip.json").read_text()))
    torch.manual_seed(11)
    saved = BlipForImageTextRetrieval(config).eval()
    tokenizer = load_tokenizer(ModelSpec.from_dict(dict(SPEC)))
    saved.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = create_adapter({"adapter": "blip", "name": str(tmp_path), "pretrained": str(tmp_path)})
    assert loaded.tokenizer(PROMPTS).input_ids == tokenizer(PROMPTS).input_ids
    pixels = _pixels(2, seed=7)
    with torch.no_grad():
        image = saved.vision_proj(saved.vision_model(pixel_values=pixels).last_hidden_state[:, 0])
        torch.testing.assert_close(loaded.encode_image(pixels), image, atol=0, rtol=0)
        cosines = F.normalize(loaded.encode_image(pixels), dim=-1) @ F.normalize(loaded.encode_text(PROMPTS), dim=-1).T
    torch.testing.assert_close(cosines, _blip_cosines(saved, tokenizer, pixels), atol=1e-6, rtol=0)


def test_unknown_project_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'rationality-tiny-nope'.*\['blip-vit-b-16', 'rationality-tiny-blip'\]"):
        create_adapter({"adapter": "blip", "name": "rationality-tiny-nope"})
    with pytest.raises(ConfigError, match="unknown BLIP options"):
        create_adapter({**SPEC, "options": {"image_sise": 96}})


def test_missing_local_directory_is_refused(tmp_path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=f"{missing!r}.*'hub', None, an existing directory.*original release"):
        create_adapter({"adapter": "blip", "name": "Salesforce/blip-itm-base-coco", "pretrained": missing})


def test_hub_model_missing_from_the_offline_cache_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {"adapter": "blip", "name": "Salesforce/blip-itm-base-coco", "pretrained": "hub",
            "options": {"cache_dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match="'Salesforce/blip-itm-base-coco'.*HF_HUB_OFFLINE=1"):
        create_adapter(spec)


def test_tokenizer_that_maps_prompts_to_unk_is_refused(tmp_path) -> None:
    """Offline, transformers can build a tokenizer of special tokens only, without an error."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ConfigError, match=r"maps 'a photo of a dog\.' to \[UNK\] \(5 tokens\)"):
        bert_tokenizer_from_vocab(vocab)


# --------------------------------------------------------------------------- BLIP's original release


def _blip_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def released_blip_state_dict(config: dict[str, Any], seed: int = 0, temp: float = 0.05) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of BLIP's released checkpoints (``BLIP_Pretrain``:
    ``model_base.pth``). What ITC does not use (cross-attention, momentum copies, queues, the caption
    decoder) are stride-0 views or shared tensors, so the full-size file stays small."""
    gen = torch.Generator().manual_seed(seed)
    vision, text = config["vision_config"], config["text_config"]
    width, hidden, embed = vision["hidden_size"], text["hidden_size"], config["image_text_hidden_size"]
    patch, grid = vision["patch_size"], vision["image_size"] // vision["patch_size"]

    def rand(*shape: int, centre: float = 0.0) -> torch.Tensor:
        return centre + 0.05 * torch.randn(*shape, generator=gen)

    def unused(*shape: int) -> torch.Tensor:
        return torch.zeros(()).expand(*shape)

    def norm(prefix: str, dim: int, make=rand) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": make(dim, centre=1.0) if make is rand else make(dim), f"{prefix}.bias": make(dim)}

    def linear(prefix: str, out_dim: int, in_dim: int, make=rand) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": make(out_dim, in_dim), f"{prefix}.bias": make(out_dim)}

    ve = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, 1 + grid * grid, width),
          "patch_embed.proj.weight": rand(width, 3, patch, patch), "patch_embed.proj.bias": rand(width),
          **norm("norm", width)}
    for i in range(vision["num_hidden_layers"]):
        inner = vision["intermediate_size"]
        ve.update({**norm(f"blocks.{i}.norm1", width), **linear(f"blocks.{i}.attn.qkv", 3 * width, width),
                   **linear(f"blocks.{i}.attn.proj", width, width), **norm(f"blocks.{i}.norm2", width),
                   **linear(f"blocks.{i}.mlp.fc1", inner, width), **linear(f"blocks.{i}.mlp.fc2", width, inner)})
    te = {"embeddings.word_embeddings.weight": rand(text["vocab_size"], hidden),
          "embeddings.position_embeddings.weight": rand(text["max_position_embeddings"], hidden),
          "embeddings.position_ids": torch.arange(text["max_position_embeddings"]).unsqueeze(0),
          **norm("embeddings.LayerNorm", hidden)}
    for i in range(text["num_hidden_layers"]):
        layer, inner = f"encoder.layer.{i}", text["intermediate_size"]
        for kind, make, source in (("attention", rand, hidden), ("crossattention", unused, width)):
            te.update({**linear(f"{layer}.{kind}.self.query", hidden, hidden, make),
                       **linear(f"{layer}.{kind}.self.key", hidden, source, make),
                       **linear(f"{layer}.{kind}.self.value", hidden, source, make),
                       **linear(f"{layer}.{kind}.output.dense", hidden, hidden, make),
                       **norm(f"{layer}.{kind}.output.LayerNorm", hidden, make)})
        te.update({**linear(f"{layer}.intermediate.dense", inner, hidden), **linear(f"{layer}.output.dense", hidden, inner),
                   **norm(f"{layer}.output.LayerNorm", hidden)})
    online = {**{f"visual_encoder.{k}": v for k, v in ve.items()}, **linear("vision_proj", embed, width),
              **{f"text_encoder.{k}": v for k, v in te.items()}, **linear("text_proj", embed, hidden)}
    momentum = {k.replace(".", "_m.", 1): v for k, v in online.items()}
    decoder = {f"text_decoder.bert.{k}": unused(*v.shape) for k, v in te.items() if k != "embeddings.position_ids"}
    decoder.update({"text_decoder.cls.predictions.bias": unused(text["vocab_size"]),
                    **linear("text_decoder.cls.predictions.transform.dense", hidden, hidden, unused),
                    **norm("text_decoder.cls.predictions.transform.LayerNorm", hidden, unused),
                    "text_decoder.cls.predictions.decoder.weight": unused(text["vocab_size"], hidden)})
    queues = {"image_queue": unused(embed, 16), "text_queue": unused(embed, 16),
              "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {**online, "temp": torch.tensor(temp), **linear("itm_head", 2, hidden), **momentum, **decoder, **queues}


def _save_release(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "model_base.pth"
    torch.save({"model": state, "optimizer": {}, "config": {"image_size": 224}, "epoch": 19}, path)
    return path


def _released_name(our_key: str) -> str:
    """Where each of transformers' weights comes from, written out apart from the adapter's mapping."""
    names = {"vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
             "vision_model.embeddings.position_embedding": "visual_encoder.pos_embed",
             "vision_model.embeddings.patch_embedding.weight": "visual_encoder.patch_embed.proj.weight",
             "vision_model.embeddings.patch_embedding.bias": "visual_encoder.patch_embed.proj.bias",
             "vision_model.post_layernorm.weight": "visual_encoder.norm.weight",
             "vision_model.post_layernorm.bias": "visual_encoder.norm.bias"}
    if our_key in names:
        return names[our_key]
    if our_key.startswith("vision_model.encoder.layers."):
        index, rest = our_key.removeprefix("vision_model.encoder.layers.").split(".", 1)
        for theirs, ours in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.qkv", "self_attn.qkv"),
                             ("attn.proj", "self_attn.projection"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            if rest.startswith(ours + "."):
                return f"visual_encoder.blocks.{index}.{theirs}{rest.removeprefix(ours)}"
    return our_key


def blip_image_embedding(state: dict[str, torch.Tensor], pixels: torch.Tensor, config: dict) -> torch.Tensor:
    """BLIP's ``vision_proj(visual_encoder(image)[:, 0])`` from the released tensors (its vit.py by hand)."""
    vision = config["vision_config"]

    def w(key: str) -> torch.Tensor:
        return state[f"visual_encoder.{key}"]

    def layer_norm(x: torch.Tensor, key: str) -> torch.Tensor:
        eps = vision.get("layer_norm_eps", 1e-5)  # transformers' default when the config leaves it out
        return F.layer_norm(x, x.shape[-1:], w(f"{key}.weight"), w(f"{key}.bias"), eps)

    x = F.conv2d(pixels, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=vision["patch_size"])
    x = torch.cat([w("cls_token").expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + w("pos_embed")
    batch, tokens, width = x.shape
    for i in range(vision["num_hidden_layers"]):
        h = layer_norm(x, f"blocks.{i}.norm1")
        q, k, v = F.linear(h, w(f"blocks.{i}.attn.qkv.weight"), w(f"blocks.{i}.attn.qkv.bias")).reshape(
            batch, tokens, 3, vision["num_attention_heads"], -1).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(mixed, w(f"blocks.{i}.attn.proj.weight"), w(f"blocks.{i}.attn.proj.bias"))
        h = F.gelu(F.linear(layer_norm(x, f"blocks.{i}.norm2"), w(f"blocks.{i}.mlp.fc1.weight"),
                            w(f"blocks.{i}.mlp.fc1.bias")))
        x = x + F.linear(h, w(f"blocks.{i}.mlp.fc2.weight"), w(f"blocks.{i}.mlp.fc2.bias"))
    return F.linear(layer_norm(x, "norm")[:, 0], state["vision_proj.weight"], state["vision_proj.bias"])


def blip_text_embedding(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, config: dict) -> torch.Tensor:
    """BLIP's ``text_proj(text_encoder(ids, mask, mode='text')[:, 0])`` (med.py, self-attention only) by hand."""
    text = config["text_config"]

    def w(key: str) -> torch.Tensor:
        return state[f"text_encoder.{key}"]

    def layer_norm(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w(f"{key}.weight"), w(f"{key}.bias"), text.get("layer_norm_eps", 1e-12))

    batch, length = ids.shape
    x = layer_norm(w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:length],
                   "embeddings.LayerNorm")
    padding = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(text["num_hidden_layers"]):
        def project(name: str, y: torch.Tensor) -> torch.Tensor:
            return F.linear(y, w(f"encoder.layer.{i}.{name}.weight"), w(f"encoder.layer.{i}.{name}.bias"))

        q, k, v = (project(f"attention.self.{n}", x).reshape(batch, length, text["num_attention_heads"], -1)
                   .transpose(1, 2) for n in ("query", "key", "value"))
        attention = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + padding).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, -1)
        x = layer_norm(project("attention.output.dense", mixed) + x, f"encoder.layer.{i}.attention.output.LayerNorm")
        x = layer_norm(project("output.dense", F.gelu(project("intermediate.dense", x))) + x,
                       f"encoder.layer.{i}.output.LayerNorm")
    return F.linear(x[:, 0], state["text_proj.weight"], state["text_proj.bias"])


def _check_release_loaded(adapter, state: dict[str, torch.Tensor], config: dict, atol: float) -> None:
    for name, tensor in adapter.model.state_dict().items():
        assert torch.equal(tensor, state[_released_name(name)].float()), name
    size = adapter.geometry.crop
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = adapter.tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapter.encode_image(pixels), blip_image_embedding(state, pixels, config),
                                   atol=atol, rtol=0)
        torch.testing.assert_close(adapter.encode_text(PROMPTS),
                                   blip_text_embedding(state, tokens.input_ids, tokens.attention_mask, config),
                                   atol=atol, rtol=0)
    assert adapter.logit_scale().item() == pytest.approx(1 / state["temp"].item())


def test_loads_the_original_release(tmp_path: Path) -> None:
    config = _blip_config("rationality-tiny-blip")
    state = released_blip_state_dict(config)
    adapter = create_adapter({**SPEC, "pretrained": str(_save_release(tmp_path, state))})
    _check_release_loaded(adapter, state, config, atol=2e-6)
    assert released_to_ours("visual_encoder.blocks.2.attn.proj.bias") == "vision_model.encoder.layers.2.self_attn.projection.bias"
    assert released_to_ours("text_decoder.bert.encoder.layer.0.output.dense.weight") is None
    assert released_to_ours("visual_encoder_m.pos_embed") is None and released_to_ours("temp") is None


@pytest.mark.parametrize("temp, scale", [(0.9, 2.0), (1e-4, 1000.0)])
def test_release_temperature_is_clamped_as_blip(tmp_path: Path, temp: float, scale: float) -> None:
    state = released_blip_state_dict(_blip_config("rationality-tiny-blip"), temp=temp)
    adapter = create_adapter({**SPEC, "pretrained": str(_save_release(tmp_path, state))})
    assert adapter.logit_scale().item() == pytest.approx(scale)


def test_release_position_embeddings_follow_image_size(tmp_path: Path) -> None:
    """A release at another resolution (e.g. a 384 px retrieval fine-tune) is resampled to the
    architecture's grid, as BLIP's load_checkpoint does; image_size then works as for any BLIP."""
    config = _blip_config("rationality-tiny-blip")
    state = released_blip_state_dict(config)
    state["visual_encoder.pos_embed"] = torch.randn(1, 1 + 12 * 12, 32, generator=torch.Generator().manual_seed(2))
    adapter = create_adapter({**SPEC, "pretrained": str(_save_release(tmp_path, state))})
    from rationality.models._released import interpolate_pos_embed
    torch.testing.assert_close(adapter.model.vision_model.embeddings.position_embedding.data,
                               interpolate_pos_embed(state["visual_encoder.pos_embed"], (8, 8)), atol=0, rtol=0)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("visual_encoder.blocks.1.attn.qkv.weight"), r"1 missing weights.*layers.1.self_attn.qkv.weight"),
    (lambda s: s.update({"visual_encoder.head.weight": torch.zeros(3, 32)}), r"1 unexpected keys: visual_encoder.head"),
    (lambda s: s.update({"vision_proj.weight": torch.zeros(16, 32)}), r"wrong shape: vision_proj.weight \(16, 32\)"),
    (lambda s: s.pop("temp"), "no learned temperature 'temp'"),
])
def test_release_with_wrong_keys_is_refused(tmp_path: Path, change, message: str) -> None:
    state = released_blip_state_dict(_blip_config("rationality-tiny-blip"))
    change(state)
    with pytest.raises(ConfigError, match=message):
        create_adapter({**SPEC, "pretrained": str(_save_release(tmp_path, state))})


def test_release_needs_a_project_architecture_and_its_own_temperature(tmp_path: Path) -> None:
    path = str(_save_release(tmp_path, released_blip_state_dict(_blip_config("rationality-tiny-blip"))))
    with pytest.raises(ConfigError, match="original release checkpoint.*name must be one of.*blip-vit-b-16"):
        create_adapter({"adapter": "blip", "name": "Salesforce/blip-itm-base-coco", "pretrained": path})
    with pytest.raises(ConfigError, match="carries its learned temperature"):
        create_adapter({**SPEC, "pretrained": path, "options": {"temperature": 0.07}})


def _padded_bert_vocab(tmp_path: Path) -> Path:
    """The tiny vocabulary padded to bert-base-uncased's 30,522 entries (no download)."""
    vocab = [line.rstrip("\n") for line in (CONFIG_DIR / "rationality-tiny-bert-vocab.txt").open()]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab + [f"[unused{i}]" for i in range(30522 - len(vocab))]) + "\n")
    return path


def test_release_tokenizer_adds_blips_two_tokens(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ModelSpec.from_dict({"adapter": "blip", "name": "blip-vit-b-16",
                                                    "options": {"tokenizer": str(_padded_bert_vocab(tmp_path))}}))
    assert len(tokenizer) == 30524 and tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tokenizer.bos_token == "[DEC]"


@pytest.mark.slow
def test_loads_the_full_size_original_release(tmp_path: Path) -> None:
    config = _blip_config("blip-vit-b-16")
    state = released_blip_state_dict(config)
    assert state["visual_encoder.pos_embed"].shape == (1, 197, 768)
    assert state["text_encoder.embeddings.word_embeddings.weight"].shape == (30524, 768)
    spec = {"adapter": "blip", "name": "blip-vit-b-16", "pretrained": str(_save_release(tmp_path, state)),
            "input_size": 224, "patch_size": 16, "options": {"tokenizer": str(_padded_bert_vocab(tmp_path))}}
    adapter = create_adapter(spec)
    assert adapter.grid == (14, 14) and adapter.num_blocks == 12
    _check_release_loaded(adapter, state, config, atol=2e-5)
