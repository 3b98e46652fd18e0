"""Every registered model adapter, on its tiny random-init configuration, honours the one contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rationality.explain import create_explainer, explain_batch, list_explainers
from rationality.models import ImageClassifier, LinearHead, PromptHead, create_adapter, list_adapters
from rationality.models.base import IMAGENET_MEAN, IMAGENET_STD

from tests.conftest import TINY_ADAPTER_SPECS

PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle."]


def test_every_registered_adapter_has_a_tiny_spec() -> None:
    assert set(TINY_ADAPTER_SPECS) == set(list_adapters())


@pytest.fixture(scope="module", params=sorted(TINY_ADAPTER_SPECS))
def adapter(request: pytest.FixtureRequest):
    return create_adapter(dict(TINY_ADAPTER_SPECS[request.param]))


def _pixels(adapter, n: int, seed: int) -> torch.Tensor:
    size = adapter.geometry.crop
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_embeddings_and_scale(adapter) -> None:
    image = adapter.encode_image(_pixels(adapter, 2, seed=0))
    text = adapter.encode_text(PROMPTS)
    assert image.ndim == 2 and image.shape[0] == 2
    assert text.shape == (len(PROMPTS), image.shape[1])
    assert adapter.logit_scale().ndim == 0 and adapter.logit_scale().item() > 0
    assert not adapter.training


def test_recording_attention_changes_nothing(adapter) -> None:
    pixels = _pixels(adapter, 2, seed=1)
    tokens = 1 + adapter.grid[0] * adapter.grid[1]
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


def test_recorded_attention_carries_gradients(adapter) -> None:
    pixels = _pixels(adapter, 2, seed=2)
    with torch.enable_grad(), adapter.recording_attention() as probabilities:
        embedding = adapter.encode_image(pixels.requires_grad_(True))
        gradients = torch.autograd.grad(embedding.sum(), probabilities)
    assert all(g.abs().max() > 0 for g in gradients)


@pytest.mark.parametrize("head_kind", ["prompt", "linear"])
def test_batched_heatmaps_equal_per_sample(adapter, head_kind: str) -> None:
    if head_kind == "prompt":
        head = PromptHead.from_prompts(adapter, PROMPTS)
    else:
        torch.manual_seed(5)
        head = LinearHead(adapter.encode_text(PROMPTS[:1]).shape[1], len(PROMPTS))
    classifier = ImageClassifier(adapter, head).eval()
    explainers = [create_explainer(name) for name in list_explainers()]
    pixels, labels = _pixels(adapter, 4, seed=3), torch.tensor([2, 0, 1, 2])
    logits, batched = explain_batch(classifier, pixels, labels, explainers)
    singles = [explain_batch(classifier, pixels[i : i + 1], labels[i : i + 1], explainers) for i in range(4)]
    assert batched.shape == (4, len(explainers), adapter.num_blocks, *adapter.grid)
    assert (batched - torch.cat([h for _, h in singles])).abs().max() < 1e-5
    assert (logits - torch.cat([l for l, _ in singles])).abs().max() < 1e-5
    assert (batched[0] - batched[3]).abs().max() > 1e-4  # different images, different heatmaps
    assert all(p.grad is None for p in classifier.parameters())


def test_image_normalization_option(adapter) -> None:
    spec = dict(TINY_ADAPTER_SPECS[adapter.spec.adapter])
    assert adapter.normalization == (adapter.native_mean, adapter.native_std)
    assert create_adapter({**spec, "image_normalization": "imagenet"}).normalization == (IMAGENET_MEAN, IMAGENET_STD)


def test_random_initialisation_is_seeded(adapter) -> None:
    spec = dict(TINY_ADAPTER_SPECS[adapter.spec.adapter])
    pixels = _pixels(adapter, 1, seed=4)
    with torch.no_grad():
        same = create_adapter({**spec, "seed": spec.get("seed", 0)}).encode_image(pixels)
        other = create_adapter({**spec, "seed": spec.get("seed", 0) + 1}).encode_image(pixels)
        torch.testing.assert_close(same, adapter.encode_image(pixels), atol=0, rtol=0)
    assert (other - same).abs().max() > 1e-4


@pytest.mark.parametrize("method", [{"kind": "zero_shot"}, {"kind": "finetune", "epochs": 1, "batch_size": 8, "lr": 1e-4}])
def test_checkpoint_and_cache_store_for_every_adapter(adapter, method: dict, synthetic_spec: dict, tmp_path) -> None:
    """Train, checkpoint and explain with each adapter: the GPU stage needs nothing adapter-specific."""
    import xarray as xr

    from rationality import schema
    from rationality.infer import run_inference
    from rationality.train import train_checkpoint

    spec = dict(TINY_ADAPTER_SPECS[adapter.spec.adapter])
    checkpoint = train_checkpoint(spec, dict(synthetic_spec), dict(method), "train", tmp_path / "ckpt", seed=0)
    store = run_inference(checkpoint, dict(synthetic_spec), "test", tmp_path / "cache.zarr",
                          explainers=["generic_attention"], batch_size=5)
    cache = xr.open_zarr(store)
    assert cache.sizes[schema.SAMPLE] == 12 and cache.sizes[schema.START_LAYER] == adapter.num_blocks
    heatmaps = cache[schema.HEATMAP].values
    assert np.isfinite(heatmaps).all() and (heatmaps != 0).any()
