"""Tip-Adapter-F: the head's logits, its zero-shot limit, what training changes, and its checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rationality.data import create_dataset
from rationality.data.loader import ImageDataset
from rationality.methods import create_method
from rationality.methods._training import Run
from rationality.methods.linear_probe import image_embeddings
from rationality.explain import create_explainer, explain_batch
from rationality.models import ImageClassifier, PromptHead, create_adapter
from rationality.models.checkpoint import load_checkpoint, state_sha256
from rationality.models.heads import TipAdapterHead, build_head
from rationality.train import TRAIN_LOG_FILE, train_checkpoint

PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle.", "a photo of a cross."]
TIP_ADAPTER = {"kind": "tip_adapter_f", "epochs": 2, "batch_size": 8, "lr": 1e-2, "alpha": 2.0, "beta": 3.0}


def _random_head(num_classes: int = 3, dim: int = 5, num_cache: int = 7, seed: int = 0) -> TipAdapterHead:
    """A head with random (unnormalised, as after training) keys and random one-hot values."""
    generator = torch.Generator().manual_seed(seed)
    head = TipAdapterHead(num_classes, dim, num_cache)
    with torch.no_grad():
        head.zero_shot.class_embeddings.copy_(torch.nn.functional.normalize(torch.randn(num_classes, dim,
                                                                                        generator=generator), dim=-1))
        head.zero_shot.scale.fill_(12.5)
        head.keys.copy_(torch.randn(num_cache, dim, generator=generator))
        head.values.copy_(torch.eye(num_classes)[torch.randint(num_classes, (num_cache,), generator=generator)])
        head.alpha.fill_(1.75)
        head.beta.fill_(4.0)
    return head


def _dataset(spec: dict, split: str, adapter) -> ImageDataset:
    reader = create_dataset(spec["reader"], spec["root"])
    return ImageDataset(reader, reader.samples(split), adapter.geometry, *adapter.normalization)


# --------------------------------------------------------------------------- the head


def test_head_logits_equal_a_hand_computation() -> None:
    head = _random_head().double()
    features = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logits = head(features)
    assert logits.shape == (4, 3)
    for i, f in enumerate(features.tolist()):
        norm = math.sqrt(sum(x * x for x in f))
        f = [x / norm for x in f]
        for c in range(3):
            similarity = sum(a * b for a, b in zip(f, head.zero_shot.class_embeddings[c].tolist()))
            cache = sum(math.exp(-4.0 * (1 - sum(a * b for a, b in zip(f, key))))
                        for key, value in zip(head.keys.tolist(), head.values.tolist()) if value[c] == 1)
            assert logits[i, c].item() == pytest.approx(12.5 * similarity + 1.75 * cache, rel=1e-12)


def test_alpha_zero_is_exactly_the_zero_shot_head(tiny_adapter) -> None:
    zero_shot = PromptHead.from_prompts(tiny_adapter, PROMPTS)
    generator = torch.Generator().manual_seed(2)
    cached = torch.randn(10, 32, generator=generator)
    head = TipAdapterHead.from_cache(zero_shot, cached, torch.arange(10) % 4, alpha=0.0, beta=5.0)
    features = torch.randn(6, 32, generator=generator)
    assert torch.equal(head(features), zero_shot(features))


def test_heatmaps_explain_the_cache_term(tiny_adapter) -> None:
    """With alpha = 0 the heatmap is the zero-shot one; the cache term changes it (why the full logit is explained)."""
    zero_shot = PromptHead.from_prompts(tiny_adapter, PROMPTS)
    generator = torch.Generator().manual_seed(4)
    pixels, labels = torch.randn(3, 3, 64, 64, generator=generator), torch.tensor([0, 2, 3])
    with torch.no_grad():
        cached = tiny_adapter.encode_image(torch.randn(8, 3, 64, 64, generator=generator))
    explainer = [create_explainer("generic_attention")]
    heatmaps = {}
    for alpha in (0.0, 50.0):
        head = TipAdapterHead.from_cache(zero_shot, cached, torch.arange(8) % 4, alpha=alpha, beta=5.0)
        heatmaps[alpha] = explain_batch(ImageClassifier(tiny_adapter, head).eval(), pixels, labels, explainer)[1]
    expected = explain_batch(ImageClassifier(tiny_adapter, zero_shot).eval(), pixels, labels, explainer)[1]
    torch.testing.assert_close(heatmaps[0.0], expected, atol=1e-6, rtol=0)
    assert (heatmaps[50.0] - expected).abs().max() > 1e-3 * expected.abs().max()


def test_cache_initialisation() -> None:
    features = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) * 7
    labels = torch.tensor([2, 0, 1, 2, 2, 0])
    head = TipAdapterHead.from_cache(_random_head().zero_shot, features, labels, alpha=0.5, beta=2.0)
    torch.testing.assert_close(head.keys.norm(dim=-1), torch.ones(6))
    assert torch.equal(head.values, torch.eye(3)[labels])
    assert (head.alpha.item(), head.beta.item()) == (0.5, 2.0)
    assert head.keys.requires_grad and [name for name, _ in head.named_parameters()] == ["keys"]
    rebuilt = build_head(head.kind, head.config(), head.state_dict())
    assert head.config() == {"num_classes": 3, "dim": 5, "num_cache": 6}
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), head.state_dict().values()))


# --------------------------------------------------------------------------- the method


def test_method_defaults() -> None:
    """Tip-Adapter-F's own training defaults (lr 0.001, 20 epochs, AdamW with eps 1e-4 and decay 0.01)."""
    method = create_method({"kind": "tip_adapter_f"})
    assert (method.lr, method.epochs, method.batch_size) == (1e-3, 20, 32)
    assert (method.optimizer, method.eps, method.weight_decay) == ("adamw", 1e-4, 0.01)
    assert (method.alpha, method.beta) == (1.0, 1.0)
    assert method.paper_start_layer == "last" and not method.trains_image_tower
    assert create_method(method.to_dict()) == method


@pytest.fixture(scope="module")
def tip_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model_spec: dict, synthetic_spec: dict) -> Path:
    out = tmp_path_factory.mktemp("tip-adapter")
    return train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), dict(TIP_ADAPTER), "train", out, seed=0,
                            device="cpu")


def test_training_changes_only_the_keys(tip_checkpoint: Path, synthetic_spec: dict, tiny_adapter,
                                       tmp_path: Path) -> None:
    train = _dataset(synthetic_spec, "train", tiny_adapter)
    features, labels = image_embeddings(tiny_adapter, train, 8, Run(tmp_path))
    method = create_method(dict(TIP_ADAPTER))
    initial = TipAdapterHead.from_cache(PromptHead.from_prompts(tiny_adapter, method.prompts(train.reader.class_names)),
                                        features, labels, method.alpha, method.beta)
    classifier, meta = load_checkpoint(tip_checkpoint)
    assert meta["method"]["kind"] == "tip_adapter_f" and classifier.head.kind == "tip_adapter"
    assert state_sha256(classifier.adapter.image_tower()) == state_sha256(tiny_adapter.image_tower())
    trained = classifier.head.state_dict()
    for name, tensor in initial.state_dict().items():
        if name == "keys":
            assert (trained[name] - tensor).abs().max() > 1e-3, "training did not move the keys"
        else:
            assert torch.equal(trained[name], tensor), name


def test_keys_have_one_row_per_training_sample(tip_checkpoint: Path, synthetic_spec: dict, tiny_adapter) -> None:
    train = _dataset(synthetic_spec, "train", tiny_adapter)
    head = load_checkpoint(tip_checkpoint)[0].head
    assert head.keys.shape == (len(train), 32) and head.values.shape == (len(train), 4)
    labels = torch.tensor([train[i][1] for i in range(len(train))])
    assert torch.equal(head.values, torch.eye(4)[labels])


def test_checkpoint_round_trip(tip_checkpoint: Path, synthetic_spec: dict, tiny_model_spec: dict) -> None:
    """The loaded classifier gives the logits of the same training run kept in memory."""
    log = (tip_checkpoint.parent / TRAIN_LOG_FILE).read_text().splitlines()
    assert len(log) == 1 + TIP_ADAPTER["epochs"]
    adapter = create_adapter(dict(tiny_model_spec))
    train = _dataset(synthetic_spec, "train", adapter)
    trained = create_method(dict(TIP_ADAPTER)).fit(adapter, train.reader.class_names, train,
                                                   Run(tip_checkpoint.parent / "again", seed=0))
    loaded = load_checkpoint(tip_checkpoint)[0]
    test = _dataset(synthetic_spec, "test", adapter)
    pixels = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), trained(pixels), atol=1e-6, rtol=0)
