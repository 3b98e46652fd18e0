"""CoOp: the context encoding equals open_clip's encode_text, only the context trains, and its checks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rationality.data import create_dataset
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods import create_method
from rationality.methods._training import TRAIN_LOG_FILE, Run
from rationality.models import PromptHead, create_adapter
from rationality.models.checkpoint import load_checkpoint, state_sha256
from rationality.train import train_checkpoint

from tests.conftest import TINY_ADAPTER_SPECS

COOP = {"kind": "coop", "epochs": 3, "batch_size": 8, "lr": 1e-2}
CLASSES = ["disk", "square", "triangle", "cross"]
#: Names of different token lengths (the padded prompts then differ in length too).
NAMES = ["disk", "big square", "triangle of three sides", "x-ray"]


def _train_split(spec: dict, adapter) -> ImageDataset:
    reader = create_dataset(spec["reader"], spec["root"])
    return ImageDataset(reader, reader.samples("train"), adapter.geometry, *adapter.normalization)


@pytest.mark.parametrize("class_specific", [False, True])
def test_context_of_a_phrase_gives_open_clips_text_embeddings(tiny_adapter, class_specific: bool) -> None:
    context = tiny_adapter.context_from_phrase("a photo of a")
    assert context.shape == (4, 64)
    if class_specific:
        context = context.expand(len(NAMES), -1, -1)
    ids = tiny_adapter.context_prompt_ids(4, NAMES)
    with torch.no_grad():
        learned = tiny_adapter.encode_text_with_context(context, ids)
        reference = tiny_adapter.encode_text([f"a photo of a {name}." for name in NAMES])
    torch.testing.assert_close(learned, reference, atol=1e-5, rtol=0)


def test_prompt_ids(tiny_adapter) -> None:
    tokenizer = tiny_adapter.tokenizer
    ids = tiny_adapter.context_prompt_ids(3, ["disk", "big square"])
    disk, big_square = tokenizer.encode("disk."), tokenizer.encode("big square.")
    assert ids.shape == (2, 1 + 3 + len(big_square) + 1)  # the longest prompt, not 77 tokens
    assert ids[:, 0].eq(tokenizer.sot_token_id).all()
    assert ids[0, 4 : 4 + len(disk)].tolist() == disk and ids[0, 4 + len(disk)] == tokenizer.eot_token_id
    assert ids[0, 5 + len(disk):].eq(0).all()
    with pytest.raises(ConfigError, match="more than the model's 77"):
        tiny_adapter.context_prompt_ids(80, ["disk"])


def test_other_text_towers_are_refused(tiny_model_spec: dict) -> None:
    adapter = create_adapter(dict(tiny_model_spec))
    adapter.model.text_pool_type = "last"
    with pytest.raises(ConfigError, match="pooled at the EOT"):
        adapter.context_prompt_ids(4, NAMES)


@pytest.fixture(scope="module")
def coop_runs(tmp_path_factory: pytest.TempPathFactory, synthetic_spec: dict, tiny_model_spec: dict):
    """The same CoOp run in memory (its adapter and classifier) and through ``train_checkpoint``."""
    out = tmp_path_factory.mktemp("coop")
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), dict(COOP), "train", out / "ckpt")
    adapter = create_adapter(dict(tiny_model_spec))
    classifier = create_method(dict(COOP)).fit(adapter, CLASSES, _train_split(synthetic_spec, adapter),
                                               Run(out / "memory"))
    return checkpoint, classifier


def test_only_the_context_trains(coop_runs, tiny_adapter) -> None:
    _, classifier = coop_runs
    trained, untouched = classifier.adapter.model.state_dict(), tiny_adapter.model.state_dict()
    for key, value in untouched.items():  # both towers and the logit scale
        assert torch.equal(trained[key], value), key
    assert all(p.requires_grad for p in classifier.adapter.parameters())
    zero_shot = PromptHead.from_prompts(tiny_adapter, [f"a photo of a {name}." for name in CLASSES])
    assert (classifier.head.class_embeddings - zero_shot.class_embeddings).abs().max() > 1e-3


def test_checkpoint_head(coop_runs, tiny_adapter, synthetic_spec: dict) -> None:
    checkpoint, in_memory = coop_runs
    classifier, meta = load_checkpoint(checkpoint)  # checks the image tower's sha256 against the base
    assert meta["method"]["kind"] == "coop" and meta["method"]["ctx_init"] == "a photo of a"
    assert meta["base_image_tower_sha256"] == state_sha256(tiny_adapter.image_tower())
    assert isinstance(classifier.head, PromptHead)
    assert float(classifier.head.scale) == pytest.approx(float(tiny_adapter.logit_scale().detach()))
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixels), in_memory(pixels), atol=1e-5, rtol=0)
        expected = tiny_adapter.logit_scale() * F.normalize(tiny_adapter.encode_image(pixels), dim=-1) \
            @ classifier.head.class_embeddings.T
        torch.testing.assert_close(classifier(pixels), expected, atol=1e-5, rtol=0)


def test_training_loss_falls(coop_runs) -> None:
    losses = [float(row["loss"]) for row in csv.DictReader((coop_runs[0].parent / TRAIN_LOG_FILE).open())]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.parametrize(("options", "shape"), [
    ({}, (4, 64)),
    ({"class_specific": True}, (4, 4, 64)),
    ({"ctx_init": ""}, (16, 64)),
    ({"n_ctx": 4}, (4, 64)),  # "a photo of a" is 4 tokens
    ({"ctx_init": "", "n_ctx": 3}, (3, 64)),
    ({"ctx_init": "", "n_ctx": 3, "class_specific": True}, (4, 3, 64)),
])
def test_initial_context(tiny_adapter, options: dict, shape: tuple[int, ...]) -> None:
    method = create_method({"kind": "coop", **options})
    context = method.initial_context(tiny_adapter, len(CLASSES), seed=0)
    assert context.shape == shape
    if method.ctx_init:
        torch.testing.assert_close(context, tiny_adapter.context_from_phrase("a photo of a").expand(shape))
    else:
        assert torch.equal(context, method.initial_context(tiny_adapter, len(CLASSES), seed=0))  # seeded
        assert 0.01 < float(context.std()) < 0.03


def test_context_length_must_match_the_phrase(tiny_adapter) -> None:
    method = create_method({"kind": "coop", "n_ctx": 16, "ctx_init": "a photo of a"})
    with pytest.raises(ConfigError, match="n_ctx 16 disagrees with ctx_init 'a photo of a', which is 4 tokens"):
        method.initial_context(tiny_adapter, len(CLASSES), seed=0)


def test_class_specific_training(tiny_adapter, synthetic_spec: dict, tmp_path: Path) -> None:
    method = create_method({**COOP, "epochs": 1, "class_specific": True, "ctx_init": "", "n_ctx": 2})
    classifier = method.fit(tiny_adapter, CLASSES, _train_split(synthetic_spec, tiny_adapter), Run(tmp_path))
    assert classifier.head.class_embeddings.shape == (4, 32)
    torch.testing.assert_close(classifier.head.class_embeddings.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("name", ["blip", "albef"])
def test_other_adapters_are_refused(name: str, synthetic_spec: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CoOp is implemented for open_clip models"):
        train_checkpoint(dict(TINY_ADAPTER_SPECS[name]), dict(synthetic_spec), dict(COOP), "train", tmp_path)


@pytest.mark.parametrize(("options", "message"), [
    ({"momentum": 0.9}, "momentum"),
    ({"n_ctx": 0}, "n_ctx"),
    ({"class_specific": "yes"}, "class_specific"),
    ({"ctx_init": 4}, "ctx_init"),
])
def test_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_method({"kind": "coop", **options})


def test_defaults() -> None:
    method = create_method({"kind": "coop"})
    assert (method.lr, method.epochs, method.batch_size, method.optimizer) == (2e-3, 10, 32, "adam")
    assert (method.n_ctx, method.ctx_init, method.class_specific) == (None, "a photo of a", False)
    assert method.paper_start_layer == "last" and not method.trains_image_tower
