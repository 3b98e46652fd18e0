"""Heatmaps: the all-start-layer recurrence, batching, attention recording, and a from-scratch reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch, list_explainers
from rationality.explain.attribution import cls_rows_for_all_start_layers, readout_rows_for_all_start_layers
from rationality.explain.base import Readout
from rationality.models import ImageClassifier, LinearHead, PromptHead

PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle.", "a photo of a cross."]
EXPLAINERS = ["generic_attention", "attention_gradient"]


def _pixels(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["prompt", "linear"])
def classifier(request: pytest.FixtureRequest, tiny_adapter) -> ImageClassifier:
    if request.param == "prompt":
        head = PromptHead.from_prompts(tiny_adapter, PROMPTS)
    else:
        torch.manual_seed(5)
        head = LinearHead(32, len(PROMPTS), normalize_features=False)
    return ImageClassifier(tiny_adapter, head).eval()


def _explain(classifier: ImageClassifier, pixels: torch.Tensor, labels: list[int],
             names: list[str] = EXPLAINERS) -> tuple[torch.Tensor, torch.Tensor]:
    return explain_batch(classifier, pixels, torch.tensor(labels), [create_explainer(n) for n in names])


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Max abs difference < 1e-5, and small relative to the values (heatmaps can be small)."""
    diff = (actual - expected).abs().max().item()
    assert diff < 1e-5, diff
    assert diff <= 1e-4 * expected.abs().max().item(), (diff, expected.abs().max().item())


# --------------------------------------------------------------------------- the recurrence


def test_cls_rows_equal_direct_products() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, tokens, layers = 3, 6, 5
    relevances = [torch.rand(batch, tokens, tokens, generator=generator, dtype=torch.float64) for _ in range(layers)]
    rows = cls_rows_for_all_start_layers(relevances)
    assert rows.shape == (batch, layers, tokens - 1)
    for s in range(layers):
        r = torch.eye(tokens, dtype=torch.float64).expand(batch, tokens, tokens)
        for layer in range(s, layers):
            r = r + relevances[layer] @ r
        torch.testing.assert_close(rows[:, s], r[:, 0, 1:], atol=1e-10, rtol=0)
    # Start layers differ: more blocks, more relevance.
    assert (rows[:, 0].sum(-1) > rows[:, -1].sum(-1)).all()


def test_cls_rows_single_block() -> None:
    relevance = torch.arange(9, dtype=torch.float64).view(1, 3, 3)
    torch.testing.assert_close(cls_rows_for_all_start_layers([relevance])[0, 0], relevance[0, 0, 1:])


def test_readout_rows_equal_direct_products_from_any_start_row() -> None:
    generator = torch.Generator().manual_seed(1)
    batch, tokens, layers = 2, 5, 3
    relevances = [torch.rand(batch, tokens, tokens, generator=generator, dtype=torch.float64) for _ in range(layers)]
    start = torch.rand(batch, tokens, generator=generator, dtype=torch.float64)
    rows = readout_rows_for_all_start_layers(relevances, start)
    for s in range(layers):
        r = torch.eye(tokens, dtype=torch.float64).expand(batch, tokens, tokens)
        for layer in range(s, layers):
            r = r + relevances[layer] @ r
        torch.testing.assert_close(rows[:, s], (start[:, None] @ r)[:, 0], atol=1e-10, rtol=0)


def _blocks(batch: int, heads: int, tokens: int, layers: int, seed: int) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(seed)
    attentions = [torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).softmax(-1)
                  for _ in range(layers)]
    gradients = [torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64)
                 for _ in range(layers)]
    return attentions, gradients


def test_average_readout_is_the_mean_of_the_patch_tokens_rows() -> None:
    """By linearity: the relevance of the mean of the patch tokens is the mean of their rows of R."""
    attentions, gradients = _blocks(batch=2, heads=3, tokens=7, layers=3, seed=5)
    prefix = 2
    averaged = Readout.average(2, 7, prefix, like=attentions[0])
    for name in list_explainers():
        explainer = create_explainer(name)
        ours = explainer(attentions, gradients, averaged)
        rows = torch.stack([explainer.rows(attentions, gradients, Readout(prefix, weights=torch.eye(7)[j].expand(2, 7)
                                                                              .to(torch.float64)))
                            for j in range(prefix, 7)])  # [patches, B, L, T]
        assert ours.shape == (2, 3, 5)
        torch.testing.assert_close(ours, rows.mean(dim=0)[:, :, prefix:], atol=1e-12, rtol=0)


def test_attention_pooling_readout_is_the_probes_rule_times_the_block_product() -> None:
    """The probe's row (generic: mean_h (G ⊙ A)^+, no identity) times R_s; zero on tokens it does not see."""
    attentions, gradients = _blocks(batch=2, heads=3, tokens=6, layers=2, seed=6)
    generator = torch.Generator().manual_seed(7)
    probe = torch.randn(2, 3, 1, 5, generator=generator, dtype=torch.float64).softmax(-1)  # skips 1 prefix token
    probe_gradient = torch.randn(2, 3, 1, 5, generator=generator, dtype=torch.float64)
    readout = Readout.attention_pool(probe, probe_gradient, tokens=6, prefix_tokens=1)
    identity = torch.eye(6, dtype=torch.float64)
    expected_start = {
        "generic_attention": (probe_gradient * probe).clamp(min=0).mean(dim=1)[:, 0],
        "attention_gradient": probe_gradient.clamp(min=0).mean(dim=1)[:, 0],
        "attention_rollout": probe.mean(dim=1)[:, 0],
    }
    factors = {
        "generic_attention": [identity + (g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)],
        "attention_gradient": [identity + g.clamp(min=0).mean(dim=1) for g in gradients],
        "attention_rollout": [0.5 * a.mean(dim=1) + 0.5 * identity for a in attentions],
    }
    for name, start in expected_start.items():
        start = torch.cat([torch.zeros(2, 1, dtype=torch.float64), start], dim=1)
        ours = create_explainer(name)(attentions, gradients, readout)
        for s in range(2):
            product = identity
            for factor in factors[name][s:]:
                product = factor @ product
            torch.testing.assert_close(ours[:, s], (start[:, None] @ product)[:, 0, 1:], atol=1e-12, rtol=0)
    raw = create_explainer("raw_attention")(attentions, gradients, readout)
    torch.testing.assert_close(raw, probe.mean(dim=1)[:, :1].expand(2, 2, 5), atol=0, rtol=0)  # K = T - 1
    with pytest.raises(ValueError, match="K <= 4"):
        Readout.attention_pool(probe, probe_gradient, tokens=4, prefix_tokens=0)


# --------------------------------------------------------------------------- explain_batch


def test_shapes_and_logits(classifier: ImageClassifier) -> None:
    pixels = _pixels(3, seed=1)
    logits, heatmaps = _explain(classifier, pixels, [0, 3, 1])
    assert heatmaps.shape == (3, len(EXPLAINERS), 4, 8, 8)
    assert heatmaps.dtype == torch.float32
    assert not logits.requires_grad and not heatmaps.requires_grad
    assert (heatmaps >= 0).all()  # both explainers clamp negative relevance
    with torch.no_grad():
        expected = classifier(pixels)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_batched_equals_per_sample(classifier: ImageClassifier) -> None:
    pixels, labels = _pixels(4, seed=2), [2, 0, 3, 2]
    _, batched = _explain(classifier, pixels, labels)
    singles = torch.cat([_explain(classifier, pixels[i : i + 1], labels[i : i + 1])[1] for i in range(4)])
    _assert_close(batched, singles)
    assert (singles[0] - singles[3]).abs().max() > 1e-3  # samples give different heatmaps


def test_sample_independent_of_batch_companions(classifier: ImageClassifier) -> None:
    pixels = _pixels(4, seed=3)
    _, first = _explain(classifier, torch.stack([pixels[0], pixels[1]]), [1, 2])
    _, second = _explain(classifier, torch.stack([pixels[2], pixels[3], pixels[0]]), [0, 0, 1])
    _assert_close(second[2], first[0])


def test_heatmap_explains_the_given_label(classifier: ImageClassifier) -> None:
    pixels = _pixels(1, seed=4)
    _, for_zero = _explain(classifier, pixels, [0])
    _, for_two = _explain(classifier, pixels, [2])
    assert (for_zero - for_two).abs().max() > 1e-4


def test_recording_attention_changes_nothing(tiny_adapter) -> None:
    pixels = _pixels(2, seed=5)
    blocks = list(tiny_adapter.model.visual.transformer.resblocks)
    originals = [block.attn for block in blocks]
    with torch.no_grad():
        plain = tiny_adapter.encode_image(pixels)
        with tiny_adapter.recording_attention() as probabilities:
            recorded = tiny_adapter.encode_image(pixels)
            assert all(not isinstance(block.attn, nn.MultiheadAttention) for block in blocks)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert len(probabilities) == tiny_adapter.num_blocks == 4
    for p in probabilities:
        assert p.shape == (2, 4, 65, 65)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(dim=-1), torch.ones(2, 4, 65), atol=1e-5, rtol=0)
    assert all(block.attn is original for block, original in zip(blocks, originals))
    assert all(type(block.attn) is nn.MultiheadAttention for block in blocks)


def test_recording_context_restores_after_an_error(tiny_adapter) -> None:
    blocks = list(tiny_adapter.model.visual.transformer.resblocks)
    originals = [block.attn for block in blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_adapter.recording_attention():
            raise RuntimeError("boom")
    assert all(block.attn is original for block, original in zip(blocks, originals))


# --------------------------------------------------------------------------- from-scratch reference


def _reference_forward(visual: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The open_clip ViT written out: embedding [B, D] and each block's attention [B, H, T, T] (grads retained)."""
    x = visual.conv1(pixels)  # [B, D, gy, gx]
    x = x.flatten(2).transpose(1, 2)  # [B, gy*gx, D], row-major over the grid
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    attentions = []
    for block in visual.transformer.resblocks:
        mha = block.attn
        width, heads = mha.embed_dim, mha.num_heads
        head_dim = width // heads
        h = block.ln_1(x)
        qkv = h @ mha.in_proj_weight.T + mha.in_proj_bias
        q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)  # [B, H, T, d]

        scores = split(q) @ split(k).transpose(-1, -2) / head_dim**0.5
        attention = torch.softmax(scores, dim=-1)
        if attention.requires_grad:
            attention.retain_grad()
        attentions.append(attention)
        mixed = (attention @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + block.ls_1(mha.out_proj(mixed))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    embedding = visual.ln_post(x[:, 0]) @ visual.proj
    return embedding, attentions


def _reference_heatmaps(classifier: ImageClassifier, pixel: torch.Tensor, label: int) -> dict[str, torch.Tensor]:
    """Chefer's R for every start layer of one sample, from .backward() gradients: name -> [L, gy*gx]."""
    visual = classifier.adapter.model.visual
    embedding, attentions = _reference_forward(visual, pixel[None].clone().requires_grad_(True))
    logits = classifier.head(embedding)
    logits[0, label].backward()
    classifier.zero_grad(set_to_none=True)  # leave the shared model's parameters as they were
    tokens = attentions[0].shape[-1]
    per_block = {
        "generic_attention": [(a.grad[0] * a[0]).clamp(min=0).mean(dim=0).detach() for a in attentions],
        "attention_gradient": [a.grad[0].clamp(min=0).mean(dim=0) for a in attentions],
    }
    out = {}
    for name, relevances in per_block.items():
        rows = []
        for start in range(len(attentions)):
            r = torch.eye(tokens)
            for layer in range(start, len(attentions)):
                r = r + relevances[layer] @ r
            rows.append(r[0, 1:])
        out[name] = torch.stack(rows)
    return out


def test_reference_forward_matches_encode_image(tiny_adapter) -> None:
    pixels = _pixels(3, seed=6)
    with torch.no_grad():
        embedding, attentions = _reference_forward(tiny_adapter.model.visual, pixels)
        torch.testing.assert_close(embedding, tiny_adapter.encode_image(pixels), atol=1e-5, rtol=0)
        with tiny_adapter.recording_attention() as recorded:
            tiny_adapter.encode_image(pixels)
    for ours, theirs in zip(attentions, recorded, strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)


def test_explain_batch_equals_reference(classifier: ImageClassifier) -> None:
    pixels, labels = _pixels(3, seed=7), [1, 3, 0]
    logits, heatmaps = _explain(classifier, pixels, labels)
    for i, label in enumerate(labels):
        reference = _reference_heatmaps(classifier, pixels[i], label)
        for e, name in enumerate(EXPLAINERS):
            ours = heatmaps[i, e].reshape(4, 64)
            _assert_close(ours, reference[name])
            assert (reference[name][0] - reference[name][-1]).abs().max() > 1e-4  # start layers differ
    assert all(p.grad is None for p in classifier.parameters())


def _hooked_generic_attention(classifier: ImageClassifier, pixel: torch.Tensor, label: int) -> torch.Tensor:
    """Generic attention [L, gy*gx] of one sample from forward hooks on the *unmodified* open_clip model.

    Each image block's ``nn.MultiheadAttention`` runs as usual; a forward hook recomputes its output
    from separate q/k/v weight chunks with einsum, keeps the probabilities (gradient retained) and
    returns that output in place of the module's own, which it first checks it reproduces.
    """
    attentions: list[torch.Tensor] = []

    def recompute(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> tuple:
        x = args[0] if module.batch_first else args[0].transpose(0, 1)  # [B, T, D]
        heads, head_dim = module.num_heads, module.embed_dim // module.num_heads
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)
        q, k, v = (torch.nn.functional.linear(x, w, b).unflatten(-1, (heads, head_dim))
                   for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
        attention = torch.einsum("bqhd,bkhd->bhqk", q, k).div(head_dim**0.5).softmax(dim=-1)
        attention.retain_grad()
        attentions.append(attention)
        out = module.out_proj(torch.einsum("bhqk,bkhd->bqhd", attention, v).flatten(2))
        out = out if module.batch_first else out.transpose(0, 1)
        torch.testing.assert_close(out, output[0], atol=1e-5, rtol=0)
        return out, None

    blocks = classifier.adapter.model.visual.transformer.resblocks
    hooks = [block.attn.register_forward_hook(recompute, with_kwargs=True) for block in blocks]
    try:
        logits = classifier(pixel[None])
        logits[0, label].backward()
    finally:
        for hook in hooks:
            hook.remove()
        classifier.zero_grad(set_to_none=True)
    relevances = [(a.grad[0] * a[0]).clamp(min=0).mean(dim=0).detach() for a in attentions]
    tokens = relevances[0].shape[0]
    rows = []
    for start in range(len(relevances)):
        r = torch.eye(tokens)
        for relevance in relevances[start:]:
            r = r + relevance @ r
        rows.append(r[0, 1:])
    return torch.stack(rows)


def test_generic_attention_equals_hooks_on_the_unmodified_model(classifier: ImageClassifier) -> None:
    pixels, labels = _pixels(3, seed=8), [0, 2, 1]
    _, heatmaps = _explain(classifier, pixels, labels, ["generic_attention"])
    for i, label in enumerate(labels):
        hooked = _hooked_generic_attention(classifier, pixels[i], label)
        _assert_close(heatmaps[i, 0].reshape(4, 64), hooked)
        assert hooked.abs().max() > 1e-3
    assert all(type(block.attn) is nn.MultiheadAttention for block in classifier.adapter.model.visual.transformer.resblocks)


def test_unknown_explainer() -> None:
    assert set(EXPLAINERS) <= set(list_explainers())
    with pytest.raises(ConfigError, match="nope") as caught:
        create_explainer("nope")
    assert all(name in str(caught.value) for name in EXPLAINERS)


# --------------------------------------------------------------------------- gradient-free baselines


def _random_attention(batch: int, heads: int, tokens: int, layers: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).softmax(-1)
            for _ in range(layers)]


def test_rollout_equals_the_product_of_mixed_attention() -> None:
    attentions = _random_attention(batch=2, heads=3, tokens=5, layers=4, seed=3)
    ours = create_explainer("attention_rollout")(attentions, [torch.zeros_like(a) for a in attentions])
    identity = torch.eye(5, dtype=torch.float64)
    for start in range(4):
        product = identity.expand(2, 5, 5)
        for attention in attentions[start:]:
            product = (0.5 * attention.mean(dim=1) + 0.5 * identity) @ product
        torch.testing.assert_close(ours[:, start], product[:, 0, 1:], atol=1e-12, rtol=0)
        assert torch.allclose(product.sum(-1), torch.ones(2, 5, dtype=torch.float64))  # rows stay stochastic


def test_raw_attention_is_the_last_blocks_cls_row_for_every_start_layer() -> None:
    attentions = _random_attention(batch=2, heads=3, tokens=5, layers=4, seed=4)
    ours = create_explainer("raw_attention")(attentions, [torch.zeros_like(a) for a in attentions])
    expected = attentions[-1].mean(dim=1)[:, 0, 1:]
    for start in range(4):
        torch.testing.assert_close(ours[:, start], expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", list_explainers())
def test_every_registered_explainer_is_batch_invariant(classifier: ImageClassifier, name: str) -> None:
    pixels, labels = _pixels(4, seed=11), [0, 1, 2, 3]
    _, batched = _explain(classifier, pixels, labels, [name])
    assert batched.shape == (4, 1, 4, 8, 8) and torch.isfinite(batched).all()
    for i in range(4):
        _, single = _explain(classifier, pixels[i:i + 1], labels[i:i + 1], [name])
        _assert_close(single[0], batched[i])


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize(("precision", "bound"), [("bf16", 0.02), ("fp16", 0.005)])
def test_autocast_heatmaps_stay_close_to_fp32(classifier: ImageClassifier, precision: str, bound: float) -> None:
    """Measured on this tiny model: at most 0.9% (bf16) and 0.13% (fp16) of each map's maximum."""
    pixels, labels = _pixels(8, seed=9), torch.arange(8) % 4
    explainers = [create_explainer(n) for n in list_explainers()]
    logits32, heatmaps32 = explain_batch(classifier, pixels, labels, explainers)
    logits, heatmaps = explain_batch(classifier, pixels, labels, explainers, precision=precision)
    assert heatmaps.dtype == logits.dtype == torch.float32
    relative = _relative_error(heatmaps, heatmaps32)
    assert 1e-4 < relative < bound  # autocast did run, and stayed within the bound
    assert (logits - logits32).abs().max() < 0.05


def _relative_error(heatmaps: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest difference as a fraction of each (sample, explainer, start layer) map's maximum."""
    scale = reference.flatten(3).abs().amax(dim=-1, keepdim=True)
    return ((heatmaps - reference).flatten(3).abs() / scale).max().item()


def _prompt_classifier(adapter, logit_scale: float) -> ImageClassifier:
    head = PromptHead.from_prompts(adapter, PROMPTS)
    head.scale.fill_(logit_scale)
    return ImageClassifier(adapter, head).eval()


def test_fp16_loss_scaling_keeps_small_gradients(tiny_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A logit scale of 1e-4 makes dy/dA small enough to underflow in fp16: 4.5% error without loss
    scaling, 0.17% with it (measured)."""
    import rationality.explain.batch as batch

    classifier = _prompt_classifier(tiny_adapter, 1e-4)
    pixels, labels = _pixels(8, seed=9), torch.arange(8) % 4
    explainers = [create_explainer("generic_attention"), create_explainer("attention_gradient")]
    _, reference = explain_batch(classifier, pixels, labels, explainers)
    _, scaled = explain_batch(classifier, pixels, labels, explainers, precision="fp16")
    monkeypatch.setattr(batch, "FP16_INITIAL_SCALE", 1.0)
    _, unscaled = explain_batch(classifier, pixels, labels, explainers, precision="fp16")
    assert _relative_error(scaled, reference) < 0.005
    assert _relative_error(unscaled, reference) > 0.02


def test_fp16_gradient_overflow_retries_with_a_smaller_scale(tiny_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a logit scale of 1e4, dy/dA reaches about 1,350: the first loss scale overflows fp16."""
    import rationality.explain.batch as batch

    classifier = _prompt_classifier(tiny_adapter, 1e4)
    pixels, labels = _pixels(8, seed=9), torch.arange(8) % 4
    explainers = [create_explainer("generic_attention")]
    scales: list[float] = []
    real = batch._attention_gradients

    def recording_scales(*args):
        scales.append(args[-1])
        return real(*args)

    _, reference = explain_batch(classifier, pixels, labels, explainers)
    monkeypatch.setattr(batch, "_attention_gradients", recording_scales)
    _, heatmaps = explain_batch(classifier, pixels, labels, explainers, precision="fp16")
    assert scales == [batch.FP16_INITIAL_SCALE, batch.FP16_INITIAL_SCALE / batch.FP16_BACKOFF]
    assert torch.isfinite(heatmaps).all() and _relative_error(heatmaps, reference) < 0.005


def test_tf32_is_fp32_on_the_cpu(classifier: ImageClassifier) -> None:
    pixels, labels = _pixels(4, seed=3), torch.arange(4)
    explainers = [create_explainer("generic_attention")]
    fp32 = explain_batch(classifier, pixels, labels, explainers)
    tf32 = explain_batch(classifier, pixels, labels, explainers, precision="tf32")
    assert torch.equal(fp32[1], tf32[1]) and torch.get_float32_matmul_precision() == "highest"


def test_unknown_precision(classifier: ImageClassifier) -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        explain_batch(classifier, _pixels(1, seed=0), torch.tensor([0]), [create_explainer("generic_attention")],
                      precision="fp8")
