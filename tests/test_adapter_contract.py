"""Every registered model family, on its tiny random-init configuration, honours the one contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch, list_explainers
from rationality.methods import list_methods
from rationality.methods.base import check_runs_supported, method_class
from rationality.models import ImageClassifier, LinearHead, PromptHead, create_adapter, list_adapters
from rationality.models.base import IMAGENET_MEAN, IMAGENET_STD, LEARNED_TEXT_CONTEXT, adapter_class

from tests.conftest import TINY_ADAPTER_SPECS

PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle."]


def test_every_registered_family_has_a_tiny_spec() -> None:
    families = {(name, family.tiny) for name in list_adapters() for family in adapter_class(name).families}
    assert {(spec["adapter"], spec["name"]) for spec in TINY_ADAPTER_SPECS.values()} == families
    assert all(adapter_class(name).families for name in list_adapters())


@pytest.fixture(scope="module", params=sorted(TINY_ADAPTER_SPECS))
def adapter(request: pytest.FixtureRequest):
    return create_adapter(dict(TINY_ADAPTER_SPECS[request.param]))


def _pixels(adapter, n: int, seed: int) -> torch.Tensor:
    size = adapter.geometry.crop
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _classifier(adapter, head_kind: str) -> ImageClassifier:
    if head_kind == "prompt":
        head = PromptHead.from_prompts(adapter, PROMPTS)
    else:
        torch.manual_seed(5)
        head = LinearHead(adapter.encode_text(PROMPTS[:1]).shape[1], len(PROMPTS))
    return ImageClassifier(adapter, head).eval()


def test_embeddings_and_scale(adapter) -> None:
    image = adapter.encode_image(_pixels(adapter, 2, seed=0))
    text = adapter.encode_text(PROMPTS)
    assert image.ndim == 2 and image.shape[0] == 2
    assert text.shape == (len(PROMPTS), image.shape[1])
    assert adapter.logit_scale().ndim == 0 and adapter.logit_scale().item() > 0
    assert not adapter.training


def test_recording_attention_changes_nothing(adapter) -> None:
    pixels = _pixels(adapter, 2, seed=1)
    tokens = adapter.prefix_tokens + adapter.grid[0] * adapter.grid[1]
    with torch.no_grad():
        plain = adapter.encode_image(pixels)
        with adapter.recording_attention() as probabilities:
            recorded = adapter.encode_image(pixels)
        after = adapter.encode_image(pixels)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert len(probabilities) == adapter.num_blocks  # nothing appended after the context closed
    torch.testing.assert_close(after, plain, atol=0, rtol=0)
    for p in probabilities:
        assert p.shape[0] == 2 and p.shape[2:] == (tokens, tokens)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(dim=-1), torch.ones(p.shape[:-1]), atol=1e-5, rtol=0)
    assert len(probabilities.pooling) == (adapter.readout == "attention")
    for p in probabilities.pooling:  # one learned query over (at most) all tokens
        assert p.shape[0] == 2 and p.shape[2] == 1 and p.shape[3] <= tokens
        torch.testing.assert_close(p.sum(dim=-1), torch.ones(p.shape[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("head_kind", ["prompt", "linear"])
def test_recording_leaves_the_logits_unchanged(adapter, head_kind: str) -> None:
    classifier = _classifier(adapter, head_kind)
    pixels = _pixels(adapter, 3, seed=7)
    with torch.no_grad():
        plain = classifier(pixels)
        with adapter.recording_attention():
            recorded = classifier(pixels)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert plain.std() > 1e-4


def test_prompt_logits_carry_the_models_scale_and_bias(adapter) -> None:
    head = PromptHead.from_prompts(adapter, PROMPTS)
    image, text = adapter.encode_image(_pixels(adapter, 2, seed=8)), adapter.encode_text(PROMPTS)
    bias = adapter.logit_bias()
    expected = adapter.logit_scale() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    expected = expected if bias is None else expected + bias
    torch.testing.assert_close(head(image), expected.detach(), atol=1e-5, rtol=1e-6)


def test_prompts_are_never_truncated(adapter) -> None:
    long_prompt = "a photo of a " + "very " * 100 + "disk."
    with pytest.raises(ConfigError, match="very very"):
        adapter.encode_text([PROMPTS[0], long_prompt])


def test_config_check_agrees_with_what_the_model_runs(adapter) -> None:
    """Capabilities are data the config check reads without building a model; they must be the truth."""
    declared = adapter.capabilities_of(adapter.spec)
    family = next(f for f in adapter.families if f.tiny == adapter.spec.name)
    assert declared == family.capabilities
    if LEARNED_TEXT_CONTEXT in declared:
        assert adapter.context_prompt_ids(4, ["disk"]).shape[0] == 1
    elif hasattr(adapter, "context_prompt_ids"):
        with pytest.raises(ConfigError, match="learned text context"):
            adapter.context_prompt_ids(4, ["disk"])
    for kind in list_methods():
        runs = [("m", "d", kind)]
        methods = {kind: {"kind": kind}}
        if method_class(kind).requires <= declared:
            check_runs_supported({"m": adapter.spec.to_dict()}, methods, runs)
        else:
            with pytest.raises(ConfigError, match=f"(?s)method '{kind}' needs .*model 'm'"):
                check_runs_supported({"m": adapter.spec.to_dict()}, methods, runs)


def test_recorded_attention_carries_gradients(adapter) -> None:
    pixels = _pixels(adapter, 2, seed=2)
    with torch.enable_grad(), adapter.recording_attention() as probabilities:
        embedding = adapter.encode_image(pixels.requires_grad_(True))
        gradients = torch.autograd.grad(embedding.sum(), probabilities)
    assert all(g.abs().max() > 0 for g in gradients)


@pytest.mark.parametrize("head_kind", ["prompt", "linear"])
def test_batched_heatmaps_equal_per_sample(adapter, head_kind: str) -> None:
    classifier = _classifier(adapter, head_kind)
    explainers = [create_explainer(name) for name in list_explainers()]
    pixels, labels = _pixels(adapter, 4, seed=3), torch.tensor([2, 0, 1, 2])
    logits, batched = explain_batch(classifier, pixels, labels, explainers)
    singles = [explain_batch(classifier, pixels[i : i + 1], labels[i : i + 1], explainers) for i in range(4)]
    assert batched.shape == (4, len(explainers), adapter.num_blocks, *adapter.grid)
    per_sample = torch.cat([h for _, h in singles])
    # float tolerance, relative to the maps' scale (random-init towers can give large relevance)
    assert (batched - per_sample).abs().max() < 1e-5 * max(1.0, per_sample.abs().max().item())
    assert (logits - torch.cat([l for l, _ in singles])).abs().max() < 1e-5
    assert (batched[0] - batched[3]).abs().max() > 1e-4  # different images, different heatmaps
    assert all(p.grad is None for p in classifier.parameters())


def test_image_normalization_option(adapter) -> None:
    spec = adapter.spec.to_dict()
    assert adapter.normalization == (adapter.native_mean, adapter.native_std)
    assert create_adapter({**spec, "image_normalization": "imagenet"}).normalization == (IMAGENET_MEAN, IMAGENET_STD)


def test_random_initialisation_is_seeded(adapter) -> None:
    spec = adapter.spec.to_dict()
    pixels = _pixels(adapter, 1, seed=4)
    with torch.no_grad():
        same = create_adapter({**spec, "seed": spec.get("seed", 0)}).encode_image(pixels)
        other = create_adapter({**spec, "seed": spec.get("seed", 0) + 1}).encode_image(pixels)
        torch.testing.assert_close(same, adapter.encode_image(pixels), atol=0, rtol=0)
    assert (other - same).abs().max() > 1e-4


#: Every registered method that trains or needs nothing (``external`` reads a checkpoint made elsewhere:
#: tests/test_external.py runs it with every adapter); those beyond zero-shot and fine-tuning run in the
#: slow suite.
METHOD_RUNS = [pytest.param(kind, marks=[] if kind in ("zero_shot", "finetune") else [pytest.mark.slow])
               for kind in list_methods() if kind != "external"]


@pytest.mark.parametrize("kind", METHOD_RUNS)
def test_checkpoint_and_cache_store_for_every_adapter(adapter, kind: str, synthetic_spec: dict, tmp_path) -> None:
    """Train, checkpoint and explain with each family and every method it can run: the GPU stage needs
    nothing family-specific (the others are refused by the config check, see above)."""
    import xarray as xr

    from rationality import schema
    from rationality.infer import run_inference
    from rationality.train import train_checkpoint

    if not method_class(kind).requires <= adapter.capabilities_of(adapter.spec):
        pytest.skip(f"{adapter.spec.name} cannot run {kind} (the config check refuses it)")
    method = {"kind": kind} if kind == "zero_shot" else {"kind": kind, "epochs": 1, "batch_size": 8}
    checkpoint = train_checkpoint(adapter.spec.to_dict(), dict(synthetic_spec), method, "train", tmp_path / "ckpt",
                                  seed=0)
    store = run_inference(checkpoint, dict(synthetic_spec), "test", tmp_path / "cache.zarr",
                          explainers=list_explainers(), batch_size=5)
    cache = xr.open_zarr(store)
    assert cache.sizes[schema.SAMPLE] == 12 and cache.sizes[schema.START_LAYER] == adapter.num_blocks
    heatmaps = cache[schema.HEATMAP].values
    assert heatmaps.shape[-2:] == adapter.grid
    assert np.isfinite(heatmaps).all() and (heatmaps != 0).any(axis=(0, 2, 3, 4)).all()
