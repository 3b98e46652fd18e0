"""The BLIP adapter on its tiny random-init config: BLIP's own ITC numbers, attention recording,
local directories and error messages. No downloads (the hub path is exercised in offline mode)."""

from __future__ import annotations

import json

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
from rationality.models.blip import CONFIG_DIR, load_tokenizer

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
    with pytest.raises(ConfigError, match=r"'rationality-tiny-nope'.*\['rationality-tiny-blip'\]"):
        create_adapter({"adapter": "blip", "name": "rationality-tiny-nope"})
    with pytest.raises(ConfigError, match="unknown BLIP options"):
        create_adapter({**SPEC, "options": {"image_sise": 96}})


def test_missing_local_directory_is_refused(tmp_path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=f"{missing!r}.*'hub', None, nor an existing directory"):
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
