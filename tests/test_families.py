"""The families beyond the paper's CLIPs: SigLIP-style and EVA-style timm towers in open_clip, transformers'
CLIPModel and SiglipModel, and timm ViTs with register tokens or average pooling.

For each, the heatmaps of every explainer and start layer are recomputed from scratch on the
*unmodified* model: forward hooks recompute each attention (and the pooling head's) by hand from the
module's weights, check that they reproduce the module's own output, keep the probabilities with their
gradient, and the relevance is built by explicit matrix products from the readout row written out
here (e_0, uniform over the patches, or the probe's rule on its attention row). The model's own
zero-shot logits (with SigLIP's bias) are compared with the prompt head's.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import open_clip
import pytest
import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent
from timm.models import register_model
from timm.models.vision_transformer import vit_base_patch16_siglip_224
from torch import nn

from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch, list_explainers
from rationality.models import ImageClassifier, LinearHead, PromptHead, create_adapter
from rationality.models.timm_towers import TimmVitTower

from tests.conftest import TINY_ADAPTER_SPECS

PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle.", "a photo of a cross."]
TINY = {"input_size": 64, "patch_size": 8}


@register_model
def rationality_test_reg_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A tiny timm ViT with a CLS token and two register tokens (prefix of 3 tokens)."""
    sizes = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 4}
    return vit_base_patch16_siglip_224(pretrained=False, **{**sizes, "class_token": True, "reg_tokens": 2, **kwargs})


@pytest.fixture(scope="module")
def register_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """open_clip configs of the register-token tower pooled by its CLS token and by averaging the patches."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    specs = {}
    for pool in ("token", "avg"):
        name = f"rationality-test-reg-{pool}"
        config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "timm_model_name": "rationality_test_reg_vit",
                                                  "timm_pool": pool, "timm_proj": "linear"},
                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}
        (folder / f"{name}.json").write_text(json.dumps(config))
        specs[pool] = {"adapter": "open_clip", "name": name, **TINY}
    open_clip.add_model_config(folder)
    return specs


# --------------------------------------------------------------------------- attention by hand


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H * d] -> [B, H, N, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [B, H, Q, N] and mixed values [B, Q, H * d] with einsum."""
    probabilities = torch.einsum("bhqd,bhkd->bhqk", q, k).mul(scale).softmax(dim=-1)
    return probabilities, torch.einsum("bhqk,bhkd->bqhd", probabilities, v).flatten(2)


def timm_attention(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` (SigLIP's and the register ViT's blocks), from separate q/k/v weight chunks."""
    x = args[0]
    weights, biases = module.qkv.weight.chunk(3), module.qkv.bias.chunk(3)
    q, k, v = (_heads(F.linear(x, w, b), module.num_heads) for w, b in zip(weights, biases))
    assert isinstance(module.q_norm, nn.Identity) and isinstance(module.norm, nn.Identity)
    probabilities, mixed = _attend(q, k, v, module.head_dim ** -0.5)
    return module.proj(mixed), probabilities


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the interleaved rotation of EVA's rotary embedding."""
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


def eva_attention(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``EvaAttention`` of EVA02-CLIP: separate q/k/v, rotary embedding on the patch tokens, sub-LN."""
    x, rope = args[0], kwargs["rope"]
    assert module.qkv is None and not module.rotate_half and isinstance(module.q_norm, nn.Identity)
    q, k, v = (_heads(projection(x), module.num_heads) for projection in (module.q_proj, module.k_proj, module.v_proj))
    sin, cos = rope.tensor_split(2, dim=-1)  # [N - prefix, d] each
    prefix = module.num_prefix_tokens

    def rotate(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, :, prefix:]
        return torch.cat([t[:, :, :prefix], patches * cos + _rotate_pairs(patches) * sin], dim=2)

    probabilities, mixed = _attend(rotate(q), rotate(k), v, module.head_dim ** -0.5)
    return module.proj(module.norm(mixed)), probabilities


def latent_pool(module: AttentionPoolLatent, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``AttentionPoolLatent`` (SigLIP's MAP head): one learned query attends, then the MLP residual."""
    x = args[0]
    assert module.pos_embed is None and module.latent_len == 1 and module.pool == "token"
    q = _heads(module.q(module.latent).expand(len(x), -1, -1), module.num_heads)
    k, v = (_heads(t, module.num_heads) for t in module.kv(x).chunk(2, dim=-1))
    probabilities, mixed = _attend(q, k, v, module.head_dim ** -0.5)
    out = module.proj(mixed)
    out = out + module.mlp(module.norm(out))
    return out[:, 0], probabilities


def hf_attention(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """transformers ``CLIPAttention`` / ``SiglipAttention`` (eager or sdpa), returning (output, weights)."""
    x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    q, k, v = (_heads(projection(x), module.num_heads) for projection in (module.q_proj, module.k_proj, module.v_proj))
    probabilities, mixed = _attend(q, k, v, module.head_dim ** -0.5)
    return (module.out_proj(mixed), probabilities), probabilities


def mha_pool(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple[torch.Tensor, None], torch.Tensor]:
    """The ``nn.MultiheadAttention`` of transformers' SigLIP head: the probe attends to the tokens."""
    probe, tokens = args[0], args[1]
    weights, biases = module.in_proj_weight.chunk(3), module.in_proj_bias.chunk(3)
    q = _heads(F.linear(probe, weights[0], biases[0]), module.num_heads)
    k, v = (_heads(F.linear(tokens, w, b), module.num_heads) for w, b in zip(weights[1:], biases[1:]))
    probabilities, mixed = _attend(q, k, v, (module.embed_dim // module.num_heads) ** -0.5)
    return (module.out_proj(mixed), None), probabilities


Recompute = Callable[[nn.Module, tuple, dict], tuple[Any, torch.Tensor]]


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def hooked_attention(classifier: ImageClassifier, pixel: torch.Tensor, label: int,
                     blocks: list[tuple[nn.Module, Recompute]], pool: tuple[nn.Module, Recompute] | None,
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Block attentions [H, T, T], their gradients, and the pooling's [H, 1, K] with its gradient, of one sample
    from hooks on the unmodified model and ``.backward()``."""
    recorded: dict[nn.Module, torch.Tensor] = {}

    def hook_for(recompute: Recompute) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            new_output, probabilities = recompute(module, args, kwargs)
            torch.testing.assert_close(_first(new_output), _first(output), atol=2e-5, rtol=1e-4)
            probabilities.retain_grad()
            recorded[module] = probabilities
            return new_output
        return hook

    handles = [module.register_forward_hook(hook_for(recompute), with_kwargs=True)
               for module, recompute in blocks + ([pool] if pool else [])]
    try:
        logits = classifier(pixel[None])
        logits[0, label].backward()
    finally:
        for handle in handles:
            handle.remove()
        classifier.zero_grad(set_to_none=True)
    attentions = [recorded[module][0].detach() for module, _ in blocks]
    gradients = [recorded[module].grad[0] for module, _ in blocks]
    if pool is None:
        return attentions, gradients, None, None
    return attentions, gradients, recorded[pool[0]][0].detach(), recorded[pool[0]].grad[0]


def reference_heatmaps(attentions: list[torch.Tensor], gradients: list[torch.Tensor], pool_attention: torch.Tensor | None,
                       pool_gradient: torch.Tensor | None, readout: str, prefix: int) -> dict[str, torch.Tensor]:
    """Every explainer's heatmaps [L, T - prefix] of one sample by explicit T x T matrix products."""
    tokens, layers = attentions[0].shape[-1], len(attentions)
    identity = torch.eye(tokens)

    def start(rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if readout == "cls":
            return identity[0]
        if readout == "average":
            return torch.cat([torch.zeros(prefix), torch.full((tokens - prefix,), 1.0 / (tokens - prefix))])
        row = rule(pool_attention, pool_gradient).mean(dim=0)[0]  # the probe's row over the K tokens it sees
        return torch.cat([torch.zeros(tokens - len(row)), row])

    def product_rows(row: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
        maps = []
        for s in range(layers):
            r = identity
            for factor in factors[s:]:  # R_s = F_{L-1} ... F_s
                r = factor @ r
            maps.append((row @ r)[prefix:])
        return torch.stack(maps)

    generic = [identity + (g * a).clamp(min=0).mean(dim=0) for a, g in zip(attentions, gradients)]
    gradient_only = [identity + g.clamp(min=0).mean(dim=0) for g in gradients]
    mixed = [0.5 * a.mean(dim=0) + 0.5 * identity for a in attentions]
    attention_row = start(lambda a, g: a)
    raw = attention_row if readout == "attention" else attention_row @ attentions[-1].mean(dim=0)
    return {
        "generic_attention": product_rows(start(lambda a, g: (g * a).clamp(min=0)), generic),
        "attention_gradient": product_rows(start(lambda a, g: g.clamp(min=0)), gradient_only),
        "attention_rollout": product_rows(attention_row, mixed),
        "raw_attention": raw[prefix:].expand(layers, -1),
    }


# --------------------------------------------------------------------------- per family: where the hooks go


def open_clip_timm_hooks(adapter) -> tuple[list[tuple[nn.Module, Recompute]], tuple[nn.Module, Recompute] | None]:
    trunk = adapter.model.visual.trunk
    recompute = eva_attention if type(trunk).__name__ == "Eva" else timm_attention
    pool = (trunk.attn_pool, latent_pool) if trunk.attn_pool is not None else None
    return [(block.attn, recompute) for block in trunk.blocks], pool


def transformers_hooks(adapter) -> tuple[list[tuple[nn.Module, Recompute]], tuple[nn.Module, Recompute] | None]:
    vision = adapter.model.vision_model
    pool = (vision.head.attention, mha_pool) if adapter.family == "siglip" else None
    return [(layer.self_attn, hf_attention) for layer in vision.encoder.layers], pool


FAMILIES = {
    "open_clip-siglip": (open_clip_timm_hooks, "attention", 0),
    "open_clip-eva": (open_clip_timm_hooks, "cls", 1),
    "transformers-clip": (transformers_hooks, "cls", 1),
    "transformers-siglip": (transformers_hooks, "attention", 0),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, create_adapter(dict(TINY_ADAPTER_SPECS[request.param]))


def _classifier(adapter, head_kind: str) -> ImageClassifier:
    if head_kind == "prompt":
        return ImageClassifier(adapter, PromptHead.from_prompts(adapter, PROMPTS)).eval()
    torch.manual_seed(5)
    return ImageClassifier(adapter, LinearHead(adapter.encode_text(PROMPTS[:1]).shape[1], len(PROMPTS))).eval()


def _pixels(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _assert_heatmaps_equal(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Float tolerance relative to the maps' scale (random-init towers give relevance from 1e-4 to 1e2)."""
    scale = reference.abs().max().item()
    assert scale > 0
    assert (ours - reference).abs().max().item() <= 1e-4 * scale, ((ours - reference).abs().max().item(), scale)


def _compare_with_hooks(adapter, hooks: Callable, readout: str, prefix: int, head_kind: str) -> None:
    assert (adapter.readout, adapter.prefix_tokens) == (readout, prefix)
    classifier = _classifier(adapter, head_kind)
    names = list_explainers()
    pixels, labels = _pixels(3, seed=11), [2, 0, 3]
    _, heatmaps = explain_batch(classifier, pixels, torch.tensor(labels), [create_explainer(n) for n in names])
    blocks, pool = hooks(adapter)
    for i, label in enumerate(labels):
        reference = reference_heatmaps(*hooked_attention(classifier, pixels[i], label, blocks, pool), readout, prefix)
        for e, name in enumerate(names):
            _assert_heatmaps_equal(heatmaps[i, e].flatten(1), reference[name])
        first, last = reference["generic_attention"][0], reference["generic_attention"][-1]
        assert (first - last).abs().max() > 1e-5 * first.abs().max()  # start layers differ
    assert all(p.grad is None for p in classifier.parameters())


@pytest.mark.parametrize("head_kind", ["prompt", "linear"])
def test_heatmaps_equal_hooks_on_the_unmodified_model(family, head_kind: str) -> None:
    key, adapter = family
    hooks, readout, prefix = FAMILIES[key]
    _compare_with_hooks(adapter, hooks, readout, prefix, head_kind)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_register_tokens_are_prefix_tokens(register_models: dict, pool: str) -> None:
    """A CLS token and two registers before the patches: the heatmap is the 64 patch columns, read out by the
    CLS token or by the mean of the patches (not of the registers)."""
    adapter = create_adapter(register_models[pool])
    assert adapter.grid == (8, 8) and adapter.prefix_tokens == 3
    _compare_with_hooks(adapter, open_clip_timm_hooks, {"token": "cls", "avg": "average"}[pool], 3, "prompt")


# --------------------------------------------------------------------------- the model's own logits


def _model_logits(key: str, adapter, pixels: torch.Tensor) -> torch.Tensor:
    """Zero-shot logits [B, C] as each library's own forward computes them (scale and bias included)."""
    if key.startswith("open_clip"):
        return adapter.model.get_logits(pixels, adapter.tokenize(PROMPTS))[0]
    tokens = (adapter.tokenizer(PROMPTS, padding="longest", return_tensors="pt") if adapter.family == "clip" else
              {"input_ids": adapter.tokenizer(PROMPTS, padding="max_length", max_length=adapter.max_text_tokens,
                                              return_tensors="pt").input_ids})
    return adapter.model(pixel_values=pixels, **tokens).logits_per_image


def test_zero_shot_logits_are_the_models_own(family) -> None:
    key, adapter = family
    pixels = _pixels(2, seed=12)
    with torch.no_grad():
        ours = ImageClassifier(adapter, PromptHead.from_prompts(adapter, PROMPTS))(pixels)
        theirs = _model_logits(key, adapter, pixels)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    assert (adapter.logit_bias() is not None) == key.endswith("siglip")


def test_siglip_bias_is_the_checkpoints(family) -> None:
    """The bias enters the prompt head, so a changed bias moves every logit by the same amount."""
    key, adapter = family
    if not key.endswith("siglip"):
        pytest.skip("CLIP and EVA-CLIP have no logit bias")
    head = PromptHead.from_prompts(adapter, PROMPTS)
    assert head.config()["biased"] and torch.equal(head.bias, adapter.logit_bias().detach())
    features = adapter.encode_image(_pixels(1, seed=13)).detach()
    shifted = PromptHead(len(PROMPTS), features.shape[1], biased=True)
    shifted.load_state_dict({**head.state_dict(), "bias": head.bias + 2.5})
    torch.testing.assert_close(shifted(features) - head(features), torch.full((1, len(PROMPTS)), 2.5))


# --------------------------------------------------------------------------- towers that are refused


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"global_pool": "max"}, "timm pooling 'max'"),
    ({"global_pool": "avgmax"}, "timm pooling 'avgmax'"),
    ({"global_pool": "avg", "dynamic_img_size": True}, "dynamic image sizes"),
])
def test_timm_towers_without_a_readout_are_refused(kwargs: dict, message: str) -> None:
    assert TimmVitTower(rationality_test_reg_vit(), "x").readout == "attention"  # the MAP head, as SigLIP
    with pytest.raises(ConfigError, match=message):
        TimmVitTower(rationality_test_reg_vit(**kwargs), "x")


# --------------------------------------------------------------------------- what runs where


@pytest.mark.parametrize(("family_key", "refused"), [
    ("open_clip", False), ("open_clip-eva", False), ("open_clip-siglip", True), ("transformers-clip", True),
    ("transformers-siglip", True), ("blip", True), ("albef", True),
])
def test_config_check_refuses_coop_where_there_is_no_learned_context(family_key: str, refused: bool) -> None:
    from rationality.config import validate_config

    config = {"models": {"m": dict(TINY_ADAPTER_SPECS[family_key])},
              "datasets": {"d": {"reader": "synthetic", "root": "nowhere"}},
              "methods": {"zs": {"kind": "zero_shot"}, "coop": {"kind": "coop"}},
              "runs": [{"models": ["m"], "datasets": ["d"], "methods": ["zs", "coop"]}]}
    if not refused:
        validate_config(config)
        return
    with pytest.raises(ConfigError, match="runs: method 'coop' needs learned_text_context, which model 'm'"):
        validate_config(config)
    validate_config({**config, "runs": [{"models": ["m"], "datasets": ["d"], "methods": ["zs"]}]})


def test_list_shows_every_family_method_explainer_and_dataset(capsys: pytest.CaptureFixture) -> None:
    from rationality.cli import main
    from rationality.data import list_datasets
    from rationality.methods import list_methods
    from rationality.models.base import adapter_class, list_adapters

    assert main(["list", "models"]) == 0
    shown = capsys.readouterr().out
    families = [family for name in list_adapters() for family in adapter_class(name).families]
    assert {"CLIP", "SigLIP / SigLIP 2", "EVA02-CLIP", "CLIP (transformers)", "SigLIP (transformers)"} <= \
        {family.name for family in families}
    for family in families:
        assert f"{family.name}\n" in shown and family.tiny in shown
    assert shown.count("methods:         all but coop") == sum(not f.capabilities for f in families) == 5
    assert "attention pooling with a learned query" in shown
    for kind, names in (("methods", list_methods()), ("explainers", list_explainers()), ("datasets", list_datasets())):
        assert main(["list", kind]) == 0
        listed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
        assert listed == names
