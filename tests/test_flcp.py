"""FLCP: the contrastive loss, what it trains (for every adapter), its checkpoint, DDP's global negatives."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rationality.data import create_dataset
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods import create_method
from rationality.methods._training import TRAIN_LOG_FILE, Run
from rationality.methods.flcp import _PairEncoder, clip_loss, flcp_step, gather_batch
from rationality.models import PromptHead, create_adapter
from rationality.models.checkpoint import load_checkpoint, state_sha256
from rationality.train import train_checkpoint

from tests.conftest import TINY_ADAPTER_SPECS

FLCP = {"kind": "flcp", "epochs": 1, "batch_size": 8, "lr": 1e-3}
PROMPTS = ["a photo of a disk.", "a photo of a square.", "a photo of a triangle.", "a photo of a cross."]


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _train_split(spec: dict, adapter) -> ImageDataset:
    reader = create_dataset(spec["reader"], spec["root"])
    return ImageDataset(reader, reader.samples("train"), adapter.geometry, *adapter.normalization)


def _hand_loss(image: torch.Tensor, text: torch.Tensor, labels: list[int], temperature: float,
               mask_same_class: bool) -> torch.Tensor:
    """Symmetric InfoNCE written out row by row: -log(exp(s_ii) / sum_j exp(s_ij)), both directions."""
    similarity = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    n = len(labels)
    total = torch.zeros(())
    for matrix in (similarity, similarity.T):
        for i in range(n):
            negatives = [j for j in range(n) if j == i or not (mask_same_class and labels[j] == labels[i])]
            total = total - (matrix[i, i] - torch.log(sum(torch.exp(matrix[i, j]) for j in negatives)))
    return total / (2 * n)


@pytest.mark.parametrize("mask_same_class", [False, True])
def test_step_loss_is_the_symmetric_clip_loss(tiny_adapter, mask_same_class: bool) -> None:
    labels = [0, 1, 0, 2, 1, 3]
    pixels = _pixels(len(labels))
    encoder = _PairEncoder(tiny_adapter, PROMPTS, temperature=0.07)
    with torch.no_grad():
        loss, logits, out_labels = flcp_step(encoder, [pixels, torch.tensor(labels)], len(PROMPTS) + 1,
                                             mask_same_class)
        image = tiny_adapter.encode_image(pixels)
        text = tiny_adapter.encode_text([PROMPTS[i] for i in labels])
        classes = tiny_adapter.encode_text(PROMPTS)
    expected = _hand_loss(image, text, labels, 0.07, mask_same_class)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    other = _hand_loss(image, text, labels, 0.07, not mask_same_class)
    assert abs(float(other) - float(expected)) > 1e-3  # the batch repeats classes: masking matters
    # The logged accuracy's logits: every image against the prompts of the classes in the batch (here the
    # four of PROMPTS), -inf for a class without a prompt in the batch (the fifth).
    torch.testing.assert_close(logits[:, :4], F.normalize(image, dim=-1) @ F.normalize(classes, dim=-1).T / 0.07,
                               atol=1e-5, rtol=0)
    assert torch.isneginf(logits[:, 4]).all()
    assert out_labels.tolist() == labels


def test_step_embeds_only_the_batch_prompts(tiny_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logged accuracy costs no text-tower pass over every class prompt (1,000 on ImageNet)."""
    encoded: list[int] = []
    real = tiny_adapter.encode_text
    monkeypatch.setattr(tiny_adapter, "encode_text", lambda prompts: (encoded.append(len(prompts)), real(prompts))[1])
    labels = torch.tensor([0, 1, 0])
    with torch.no_grad():
        flcp_step(_PairEncoder(tiny_adapter, PROMPTS, temperature=0.07), [_pixels(3), labels], len(PROMPTS))
    assert encoded == [3]


def test_mask_without_repeated_classes_changes_nothing() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clip_loss(logits, torch.arange(5)), clip_loss(logits))
    assert clip_loss(logits, torch.tensor([0, 0, 1, 1, 2])) < clip_loss(logits)  # fewer negatives


@pytest.fixture(scope="module")
def flcp_runs(tmp_path_factory: pytest.TempPathFactory, synthetic_spec: dict, tiny_model_spec: dict):
    """The same 3-epoch FLCP run twice: in memory (its fine-tuned towers) and through ``train_checkpoint``."""
    out = tmp_path_factory.mktemp("flcp")
    method = {**FLCP, "epochs": 3, "lr": 2e-3}
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), method, "train", out / "ckpt")
    adapter = create_adapter(dict(tiny_model_spec))
    classifier = create_method(method).fit(adapter, ["disk", "square", "triangle", "cross"],
                                               _train_split(synthetic_spec, adapter), Run(out / "memory"))
    return checkpoint, classifier.adapter


def test_both_towers_change_and_the_scale_does_not(flcp_runs, tiny_adapter) -> None:
    _, tuned = flcp_runs
    assert not tuned.training and all(p.requires_grad for p in tuned.parameters())
    assert state_sha256(tuned.image_tower()) != state_sha256(tiny_adapter.image_tower())
    with torch.no_grad():
        assert (tuned.encode_text(PROMPTS) - tiny_adapter.encode_text(PROMPTS)).abs().max() > 1e-4
    assert torch.equal(tuned.model.logit_scale, tiny_adapter.model.logit_scale)


def test_checkpoint_head_is_the_fine_tuned_similarity(flcp_runs, tiny_adapter) -> None:
    checkpoint, tuned = flcp_runs
    classifier, meta = load_checkpoint(checkpoint)
    assert meta["method"]["kind"] == "flcp"
    assert (meta["method"]["temperature"], meta["method"]["learned_scale"]) == (None, False)
    assert meta["base_image_tower_sha256"] == state_sha256(tiny_adapter.image_tower())
    assert isinstance(classifier.head, PromptHead)
    pixels = _pixels(3, seed=1)
    with torch.no_grad():
        expected = (F.normalize(tuned.encode_image(pixels), dim=-1)
                    @ F.normalize(tuned.encode_text(PROMPTS), dim=-1).T / 0.07)
        torch.testing.assert_close(classifier(pixels), expected, atol=1e-5, rtol=0)


def test_training_loss_falls(flcp_runs) -> None:
    rows = list(csv.DictReader((flcp_runs[0].parent / TRAIN_LOG_FILE).open()))
    losses = [float(row["loss"]) for row in rows]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.parametrize(("options", "scale"), [({}, 100.0),
                                                ({"head_scale": "temperature", "temperature": 0.05}, 20.0)])
def test_head_scale(options: dict, scale: float, tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    adapter = create_adapter(dict(tiny_model_spec))
    with torch.no_grad():
        adapter.model.logit_scale.fill_(math.log(100.0))  # as OpenAI's weights
    method = create_method({"kind": "flcp", "epochs": 0, **options})
    classifier = method.fit(adapter, ["disk", "square", "triangle", "cross"], _train_split(synthetic_spec, adapter),
                            Run(tmp_path))
    assert float(classifier.head.scale) == pytest.approx(scale)


@pytest.mark.parametrize("name", sorted(TINY_ADAPTER_SPECS))
def test_trains_what_the_contract_reaches(name: str, synthetic_spec: dict, tmp_path: Path) -> None:
    """Every adapter: both towers move; the logit scale and what the contract never uses do not."""
    adapter = create_adapter(dict(TINY_ADAPTER_SPECS[name]))
    before = {key: value.clone() for key, value in adapter.state_dict().items()}
    create_method(dict(FLCP)).fit(adapter, ["disk", "square", "triangle", "cross"],
                                  _train_split(synthetic_spec, adapter), Run(tmp_path))
    changed = {key for key, value in adapter.state_dict().items() if not torch.equal(value, before[key])}
    image_tower = {id(p) for p in adapter.image_tower().parameters()}
    image = {key for key, p in adapter.named_parameters() if id(p) in image_tower}
    assert changed & image and changed - image  # both towers
    assert not changed & {"model.logit_scale", "temp"}
    if name == "blip":  # the ITM head and the text encoder's cross-attention serve ITM only
        assert not {key for key in changed if "itm_head" in key or "crossattention" in key}


def test_learned_scale(tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    adapter = create_adapter(dict(tiny_model_spec))
    before = adapter.model.logit_scale.detach().clone()
    method = create_method({**FLCP, "learned_scale": True, "lr": 1e-2})
    classifier = method.fit(adapter, ["disk", "square", "triangle", "cross"], _train_split(synthetic_spec, adapter),
                            Run(tmp_path))
    assert not torch.equal(adapter.model.logit_scale, before)
    assert float(classifier.head.scale) == pytest.approx(float(adapter.model.logit_scale.detach().exp()))


def test_options_are_checked(synthetic_spec: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="temperature must be positive"):
        create_method({"kind": "flcp", "temperature": 0})
    with pytest.raises(ConfigError, match="head_scale"):
        create_method({"kind": "flcp", "head_scale": "both"})
    with pytest.raises(ConfigError, match="fixed temperature"):
        create_method({"kind": "flcp", "head_scale": "temperature", "learned_scale": True})
    with pytest.raises(ConfigError, match="either temperature .* or learned_scale"):
        create_method({"kind": "flcp", "temperature": 0.07, "learned_scale": True})
    with pytest.raises(ConfigError, match="momentum"):
        create_method({"kind": "flcp", "momentum": 0.9})
    defaults = create_method({"kind": "flcp", "temperature": None})
    assert (defaults.lr, defaults.temperature, defaults.loss_temperature) == (1e-5, None, 0.07)
    blip = create_adapter(dict(TINY_ADAPTER_SPECS["blip"]))
    with pytest.raises(ConfigError, match="learned_scale.*blip"):
        create_method({**FLCP, "learned_scale": True}).fit(blip, ["disk", "square", "triangle", "cross"],
                                                           _train_split(synthetic_spec, blip), Run(tmp_path))


# --------------------------------------------------------------------------- DDP: global negatives


def _features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1), torch.tensor([0, 1, 0, 2, 1, 3, 3])


def _loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    all_image, all_text, all_labels = gather_batch(image, text, labels)
    return clip_loss(all_image @ all_text.T / 0.07, all_labels)


def _gather_worker(rank: int, root: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=2)
    try:
        image, text, labels = _features()
        share = slice(0, 3) if rank == 0 else slice(3, 7)  # unequal shares, as the loop's last batch
        image, text = image[share].clone().requires_grad_(True), text[share].clone().requires_grad_(True)
        loss = _loss(image, text, labels[share])
        loss.backward()
        torch.save({"loss": loss.detach(), "image": image.grad, "text": text.grad}, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_and_gradients_equal_one_process(tmp_path: Path) -> None:
    image, text, labels = _features()
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss = _loss(image, text, labels)
    loss.backward()
    mp.spawn(_gather_worker, args=(tmp_path,), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for result in ranks:
        torch.testing.assert_close(result["loss"], loss.detach())
    # DDP averages the two processes' gradients: each holds twice its rows' share of the full gradient.
    for key, full in (("image", image.grad), ("text", text.grad)):
        torch.testing.assert_close(torch.cat([ranks[0][key], ranks[1][key]]) / 2, full, atol=1e-6, rtol=1e-6)
