"""The ALBEF adapter: released-checkpoint key mapping, ALBEF's own forward computed by hand, errors,
attention recording and position-embedding interpolation (tiny configs; one slow test at full size)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

from rationality.errors import ConfigError
from rationality.models import create_adapter
from rationality.models._released import interpolate_pos_embed
from rationality.models.albef import CONFIG_DIR

TINY = {"adapter": "albef", "name": "rationality-tiny-albef"}
VOCAB = [line.rstrip("\n") for line in (CONFIG_DIR / "rationality-tiny-bert-vocab.txt").open()]


def _config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def released_state_dict(config: dict[str, Any], *, image_size: int | None = None, retrieval: bool = False,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released checkpoint's names and shapes (ALBEF.pth, or mscoco.pth style).

    Keys ITC ignores (fusion layers, MLM head, ITM head, queues) are stride-0 views of one number, and
    the momentum copies share the online tensors, so even the full-size file stays small.
    """
    gen = torch.Generator().manual_seed(seed)
    vision, text, embed = config["vision"], config["text"], config["embed_dim"]
    width, hidden, inner = vision["width"], text["hidden_size"], text["intermediate_size"]
    grid = (image_size or vision["image_size"]) // vision["patch_size"]

    def rand(*shape: int, centre: float = 0.0) -> torch.Tensor:
        return centre + 0.05 * torch.randn(*shape, generator=gen)

    def unused(*shape: int) -> torch.Tensor:
        return torch.zeros(()).expand(*shape)

    def norm(prefix: str, dim: int, make=rand) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": make(dim, centre=1.0) if make is rand else make(dim), f"{prefix}.bias": make(dim)}

    def linear(prefix: str, out_dim: int, in_dim: int, make=rand) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": make(out_dim, in_dim), f"{prefix}.bias": make(out_dim)}

    ve = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, 1 + grid * grid, width),
          **linear("patch_embed.proj", width, 3 * vision["patch_size"] ** 2), **norm("norm", width)}
    ve["patch_embed.proj.weight"] = ve["patch_embed.proj.weight"].reshape(width, 3, vision["patch_size"], -1)
    for i in range(vision["layers"]):
        mlp = int(width * vision["mlp_ratio"])
        ve.update({**norm(f"blocks.{i}.norm1", width), **linear(f"blocks.{i}.attn.qkv", 3 * width, width),
                   **linear(f"blocks.{i}.attn.proj", width, width), **norm(f"blocks.{i}.norm2", width),
                   **linear(f"blocks.{i}.mlp.fc1", mlp, width), **linear(f"blocks.{i}.mlp.fc2", width, mlp)})
    te = {"embeddings.word_embeddings.weight": rand(text["vocab_size"], hidden),
          "embeddings.position_embeddings.weight": rand(text["max_position_embeddings"], hidden),
          "embeddings.token_type_embeddings.weight": rand(text["type_vocab_size"], hidden),
          "embeddings.position_ids": torch.arange(text["max_position_embeddings"]).unsqueeze(0),
          **norm("embeddings.LayerNorm", hidden)}
    for i in range(text["num_hidden_layers"]):
        make, layer = (rand if i < text["fusion_layer"] else unused), f"encoder.layer.{i}"
        attention_kinds = ["attention"] + (["crossattention"] if i >= text["fusion_layer"] else [])
        for kind in attention_kinds:
            source = width if kind == "crossattention" else hidden  # keys and values of the image tokens
            te.update({**linear(f"{layer}.{kind}.self.query", hidden, hidden, make),
                       **linear(f"{layer}.{kind}.self.key", hidden, source, make),
                       **linear(f"{layer}.{kind}.self.value", hidden, source, make)})
            te.update({**linear(f"{layer}.{kind}.output.dense", hidden, hidden, make),
                       **norm(f"{layer}.{kind}.output.LayerNorm", hidden, make)})
        te.update({**linear(f"{layer}.intermediate.dense", inner, hidden, make),
                   **linear(f"{layer}.output.dense", hidden, inner, make),
                   **norm(f"{layer}.output.LayerNorm", hidden, make)})
    if not retrieval:
        te = {f"bert.{k}": v for k, v in te.items()}
        te.update({"cls.predictions.bias": unused(text["vocab_size"]),
                   **linear("cls.predictions.transform.dense", hidden, hidden, unused),
                   **norm("cls.predictions.transform.LayerNorm", hidden, unused),
                   **linear("cls.predictions.decoder", text["vocab_size"], hidden, unused)})
    online = {**{f"visual_encoder.{k}": v for k, v in ve.items()}, **linear("vision_proj", embed, width),
              **{f"text_encoder.{k}": v for k, v in te.items()}, **linear("text_proj", embed, hidden)}
    momentum = {k.replace(".", "_m.", 1): v for k, v in online.items()}
    queues = {"image_queue": unused(embed, 16), "text_queue": unused(embed, 16),
              "queue_ptr": torch.zeros(1, dtype=torch.long)}
    if retrieval:
        queues["idx_queue"] = torch.full((1, 16), -100)
    return {**online, "temp": torch.tensor(0.05), **linear("itm_head", 2, hidden, unused), **momentum, **queues}


def _save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "ALBEF.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": state, "epoch": 29, "config": {"image_res": 256, "temp": 0.07}}, path)
    return path


def _released_name(our_key: str, retrieval: bool) -> str:
    """Where each of our weights comes from, written out independently of the adapter's mapping."""
    for ours, theirs in (("vision.vit.", "visual_encoder."), ("vision.proj.", "vision_proj."),
                         ("text.", "text_encoder." if retrieval else "text_encoder.bert.")):
        if our_key.startswith(ours):
            return theirs + our_key.removeprefix(ours)
    return our_key


def albef_image_embedding(state: dict[str, torch.Tensor], pixels: torch.Tensor, config: dict) -> torch.Tensor:
    """ALBEF's ``vision_proj(visual_encoder(image)[:, 0])``, from the released tensors alone."""
    vision = config["vision"]

    def w(key: str) -> torch.Tensor:
        return state[f"visual_encoder.{key}"]

    def layer_norm(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w(f"{key}.weight"), w(f"{key}.bias"), vision["layer_norm_eps"])

    x = F.conv2d(pixels, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=vision["patch_size"])
    x = torch.cat([w("cls_token").expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + w("pos_embed")
    batch, tokens, width = x.shape
    for i in range(vision["layers"]):
        h = layer_norm(x, f"blocks.{i}.norm1")
        qkv = F.linear(h, w(f"blocks.{i}.attn.qkv.weight"), w(f"blocks.{i}.attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, tokens, 3, vision["heads"], -1).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(mixed, w(f"blocks.{i}.attn.proj.weight"), w(f"blocks.{i}.attn.proj.bias"))
        h = layer_norm(x, f"blocks.{i}.norm2")
        h = F.gelu(F.linear(h, w(f"blocks.{i}.mlp.fc1.weight"), w(f"blocks.{i}.mlp.fc1.bias")))
        x = x + F.linear(h, w(f"blocks.{i}.mlp.fc2.weight"), w(f"blocks.{i}.mlp.fc2.bias"))
    return F.linear(layer_norm(x, "norm")[:, 0], state["vision_proj.weight"], state["vision_proj.bias"])


def albef_text_embedding(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, config: dict,
                         prefix: str = "text_encoder.bert.") -> torch.Tensor:
    """ALBEF's ``text_proj(text_encoder(ids, mask, mode='text')[:, 0])`` (xbert), from the released tensors."""
    text = config["text"]

    def w(key: str) -> torch.Tensor:
        return state[prefix + key]

    def layer_norm(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w(f"{key}.weight"), w(f"{key}.bias"), text["layer_norm_eps"])

    batch, length = ids.shape
    x = (w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:length]
         + w("embeddings.token_type_embeddings.weight")[0])
    x = layer_norm(x, "embeddings.LayerNorm")
    padding = (1.0 - mask[:, None, None, :].float()) * -10000.0  # xbert's extended attention mask
    for i in range(text["fusion_layer"]):
        def project(name: str, y: torch.Tensor) -> torch.Tensor:
            return F.linear(y, w(f"encoder.layer.{i}.{name}.weight"), w(f"encoder.layer.{i}.{name}.bias"))

        q, k, v = (project(f"attention.self.{n}", x).reshape(batch, length, text["num_attention_heads"], -1)
                   .transpose(1, 2) for n in ("query", "key", "value"))
        attention = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + padding).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, -1)
        x = layer_norm(project("attention.output.dense", mixed) + x, f"encoder.layer.{i}.attention.output.LayerNorm")
        inner = F.gelu(project("intermediate.dense", x))
        x = layer_norm(project("output.dense", inner) + x, f"encoder.layer.{i}.output.LayerNorm")
    return F.linear(x[:, 0], state["text_proj.weight"], state["text_proj.bias"])


def _check_loaded(adapter, state: dict[str, torch.Tensor], config: dict, retrieval: bool, atol: float = 2e-6) -> None:
    """Every weight equals its released tensor; embeddings equal ALBEF's forward by hand (fp32 rounding only)."""
    ours = adapter.state_dict()
    for name, tensor in ours.items():
        assert torch.equal(tensor, state[_released_name(name, retrieval)].float()), name
    text_layers = {int(k.split(".")[3]) for k in ours if k.startswith("text.encoder.layer.")}
    assert text_layers == set(range(config["text"]["fusion_layer"]))
    size = adapter.geometry.crop
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    prompts = ["A photo of a Dog.", "cat"]
    ids, mask = adapter.tokenize(prompts)
    prefix = "text_encoder." if retrieval else "text_encoder.bert."
    with torch.no_grad():
        torch.testing.assert_close(adapter.encode_image(pixels), albef_image_embedding(state, pixels, config),
                                   atol=atol, rtol=0)
        torch.testing.assert_close(adapter.encode_text(prompts), albef_text_embedding(state, ids, mask, config, prefix),
                                   atol=atol, rtol=0)
    assert adapter.logit_scale().ndim == 0 and adapter.logit_scale().item() == pytest.approx(1 / 0.05)


@pytest.mark.parametrize("retrieval", [False, True], ids=["pretraining", "retrieval"])
def test_loads_released_checkpoint(tmp_path: Path, retrieval: bool) -> None:
    config = _config("rationality-tiny-albef")
    state = released_state_dict(config, retrieval=retrieval)
    adapter = create_adapter({**TINY, "pretrained": str(_save(tmp_path, state))})
    _check_loaded(adapter, state, config, retrieval)
    assert not adapter.training


@pytest.mark.slow
def test_loads_released_full_size_checkpoint(tmp_path: Path) -> None:
    config = _config("albef-vit-b-16")
    state = released_state_dict(config)
    assert len(state) == 844 and state["visual_encoder.pos_embed"].shape == (1, 257, 768)  # ALBEF.pth key count
    vocab = tmp_path / "vocab.txt"  # the tiny vocabulary padded to BERT's size (no download)
    vocab.write_text("\n".join(VOCAB + [f"[unused{i}]" for i in range(30522 - len(VOCAB))]) + "\n")
    spec = {"adapter": "albef", "name": "albef-vit-b-16", "pretrained": str(_save(tmp_path, state)),
            "options": {"tokenizer": str(vocab)}, "input_size": 256, "patch_size": 16}
    adapter = create_adapter(spec)
    assert adapter.grid == (16, 16) and adapter.num_blocks == 12
    assert adapter.encode_image(torch.zeros(1, 3, 256, 256)).shape == (1, 256)
    _check_loaded(adapter, state, config, retrieval=False, atol=2e-5)  # 12 blocks of width 768


def test_tokenize_follows_albef() -> None:
    adapter = create_adapter(dict(TINY))
    ids, mask = adapter.tokenize(["A photo of a Dog.", "b", "x" * 29])
    words = ["[CLS]", "a", "p", "##h", "##o", "##t", "##o", "o", "##f", "a", "d", "##o", "##g"]  # no "." and no [SEP]
    assert ids[0].tolist() == [VOCAB.index(t) for t in words] + [0] * 17
    assert ids[1].tolist()[:2] == [VOCAB.index("[CLS]"), VOCAB.index("b")] and set(ids[1, 2:].tolist()) == {0}
    assert mask[1].tolist() == [1, 1] + [0] * 28 and mask[0, :13].all()
    assert ids.shape == (3, 30) and mask[2].all()  # max_text_length tokens, [CLS] included
    with pytest.raises(ConfigError, match="more than ALBEF's 30 text tokens"):
        adapter.tokenize(["b", "x" * 30])  # never truncated


@pytest.mark.parametrize("temp, scale", [(0.05, 20.0), (0.9, 2.0), (1e-4, 1000.0)])
def test_logit_scale_clamps_temperature_as_albef(tmp_path: Path, temp: float, scale: float) -> None:
    state = {**released_state_dict(_config("rationality-tiny-albef")), "temp": torch.tensor(temp)}
    adapter = create_adapter({**TINY, "pretrained": str(_save(tmp_path, state))})
    assert adapter.logit_scale().item() == pytest.approx(scale)
    assert create_adapter(dict(TINY)).logit_scale().item() == pytest.approx(1 / 0.07)


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("visual_encoder.blocks.1.attn.qkv.weight"), "blocks.1.attn.qkv.weight"),
    (lambda s: s.pop("text_encoder.bert.encoder.layer.1.output.dense.bias"), "encoder.layer.1.output.dense.bias"),
    (lambda s: s.update({"text_decoder.bert.pooler.weight": torch.zeros(2)}), "text_decoder.bert.pooler.weight"),
    (lambda s: s.update({"text_encoder.bert.pooler.dense.weight": torch.zeros(2)}), "text_encoder.bert.pooler.dense"),
    (lambda s: s.update({"vision_proj.weight": torch.zeros(32, 65)}), "vision_proj.weight (32, 65)"),
], ids=["missing-vision", "missing-text", "unexpected", "unexpected-pooler", "wrong-shape"])
def test_checkpoint_faults_name_file_and_key(tmp_path: Path, change, named: str) -> None:
    state = released_state_dict(_config("rationality-tiny-albef"))
    change(state)
    path = _save(tmp_path, state, "broken.pth")
    with pytest.raises(ConfigError, match="broken.pth") as error:
        create_adapter({**TINY, "pretrained": str(path)})
    assert named in str(error.value)


class _Opaque:
    """An object ``torch.load(weights_only=True)`` refuses to unpickle."""


def test_refused_pickle_needs_explicit_trust(tmp_path: Path) -> None:
    state = released_state_dict(_config("rationality-tiny-albef"))
    path = tmp_path / "pickled.pth"
    torch.save({"model": state, "args": _Opaque()}, path)
    with pytest.raises(ConfigError, match="allow_unsafe_pickle"):
        create_adapter({**TINY, "pretrained": str(path)})
    adapter = create_adapter({**TINY, "pretrained": str(path), "options": {"allow_unsafe_pickle": True}})
    assert torch.equal(adapter.vision.proj.weight, state["vision_proj.weight"])
    with pytest.raises(ConfigError, match="does not exist"):
        create_adapter({**TINY, "pretrained": str(tmp_path / "absent.pth")})


def test_unknown_name_option_or_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rationality-tiny-albef"):
        create_adapter({**TINY, "name": "albef-vit-b-17"})
    with pytest.raises(ConfigError, match="image_sise"):
        create_adapter({**TINY, "options": {"image_sise": 96}})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB[:40]) + "\n")
    with pytest.raises(ConfigError, match="40 tokens"):
        create_adapter({**TINY, "options": {"tokenizer": str(vocab)}})


def test_pos_embed_of_another_grid_is_interpolated(tmp_path: Path) -> None:
    config = _config("rationality-tiny-albef")
    state = released_state_dict(config, image_size=32)  # a 4x4 grid; the tiny model has 8x8
    state["visual_encoder.pos_embed"][:, 1:] = torch.linspace(-1, 1, 64)  # constant over the grid, per channel
    adapter = create_adapter({**TINY, "pretrained": str(_save(tmp_path, state))})
    loaded = adapter.vision.vit.pos_embed.detach()
    assert loaded.shape == (1, 65, 64)
    assert torch.equal(loaded[:, 0], state["visual_encoder.pos_embed"][:, 0])  # CLS unchanged
    torch.testing.assert_close(loaded[0, 1:], torch.linspace(-1, 1, 64).expand(64, 64), atol=1e-6, rtol=0)
    bigger = create_adapter({**TINY, "pretrained": str(_save(tmp_path, state)), "options": {"image_size": 96}})
    assert bigger.grid == (12, 12) and bigger.geometry.crop == 96
    assert bigger.encode_image(torch.zeros(1, 3, 96, 96)).shape == (1, 32)


def test_interpolate_pos_embed_is_bicubic_over_the_grid() -> None:
    pos_embed = torch.randn(1, 1 + 16, 5, generator=torch.Generator().manual_seed(0))
    resized = interpolate_pos_embed(pos_embed, (6, 6))
    grid = pos_embed[0, 1:].reshape(4, 4, 5).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(36, 5)
    assert resized.shape == (1, 37, 5) and torch.equal(resized[0, 0], pos_embed[0, 0])
    torch.testing.assert_close(resized[0, 1:], expected, atol=1e-6, rtol=0)
    assert interpolate_pos_embed(pos_embed, (4, 4)) is pos_embed


def test_recording_forward_equals_timm_blocks() -> None:
    adapter = create_adapter(dict(TINY))
    tokens = torch.randn(2, 65, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = [block(tokens) for block in adapter._blocks]
        with adapter.recording_attention() as probabilities:
            recorded = [block(tokens) for block in adapter._blocks]
    assert len(probabilities) == 3 and probabilities[0].shape == (2, 4, 65, 65)
    for ours, timm_output in zip(recorded, plain):
        assert (ours - timm_output).abs().max() < 1e-5
    assert all(type(block.attn) is Attention for block in adapter._blocks)


def test_recording_is_undone_after_an_exception() -> None:
    adapter = create_adapter(dict(TINY))
    originals = [block.attn for block in adapter._blocks]
    with pytest.raises(RuntimeError, match="inside"), adapter.recording_attention():
        raise RuntimeError("inside")
    assert all(block.attn is original for block, original in zip(adapter._blocks, originals))
