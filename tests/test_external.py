"""``kind: external``: fine-tuned weights made elsewhere, evaluated exactly as the same weights trained here.

The equivalence tests save a tiny model's weights the way other code would (a whole open_clip state dict
inside a training checkpoint, an image tower as safetensors, a linear head under a prefix) and check
that the GPU stage's logits and heatmaps equal, bit for bit, those of our own run of the same weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from conftest import TINY_ADAPTER_SPECS
from rationality import schema
from rationality.errors import ConfigError
from rationality.infer import run_inference
from rationality.methods import create_method
from rationality.models import create_adapter
from rationality.models.checkpoint import load_checkpoint
from rationality.models.weights import fitting_prefix, read_tensors
from rationality.train import train_checkpoint

CLASSES = ("disk", "square", "triangle", "cross")  # the synthetic dataset's, in its order
EXPLAINERS = ["generic_attention", "attention_gradient"]


def _cache(checkpoint: Path, dataset: dict, out: Path) -> xr.Dataset:
    return xr.open_zarr(run_inference(checkpoint, dataset, "test", out, explainers=EXPLAINERS, device="cpu"))


def assert_same_caches(ours: xr.Dataset, theirs: xr.Dataset) -> None:
    """Same samples, classes, logits and heatmaps, exactly."""
    assert list(ours[schema.SAMPLE].values) == list(theirs[schema.SAMPLE].values)
    assert list(ours[schema.CLASS].values) == list(theirs[schema.CLASS].values)
    np.testing.assert_array_equal(ours[schema.LOGITS].values, theirs[schema.LOGITS].values)
    np.testing.assert_array_equal(ours[schema.HEATMAP].values, theirs[schema.HEATMAP].values)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_model_spec: dict, synthetic_spec: dict) -> Path:
    """A fine-tuning checkpoint of our own (image tower and linear head trained)."""
    return train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec),
                            {"kind": "finetune", "epochs": 1, "lr": 1e-3, "batch_size": 8}, "train",
                            tmp_path_factory.mktemp("ft"), device="cpu")


def test_image_tower_and_head_give_exactly_our_fine_tuning(finetuned: Path, tiny_model_spec: dict,
                                                           synthetic_spec: dict, tmp_path: Path) -> None:
    classifier, _ = load_checkpoint(finetuned)
    save_file(classifier.adapter.image_tower().state_dict(), tmp_path / "tower.safetensors")
    torch.save({"epoch": 1, "fc": {"weight": classifier.head.linear.weight, "bias": classifier.head.linear.bias}},
               tmp_path / "head.pt")
    external = {"kind": "external", "weights": str(tmp_path / "tower.safetensors"), "weights_of": "image_tower",
                "head": str(tmp_path / "head.pt"), "head_prefix": "fc."}
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), external, "train",
                                  tmp_path / "external", device="cpu")
    ours, theirs = _cache(finetuned, synthetic_spec, tmp_path / "ours.zarr"), _cache(checkpoint, synthetic_spec,
                                                                                    tmp_path / "theirs.zarr")
    assert_same_caches(ours, theirs)
    assert theirs.attrs[schema.ATTR_METHOD_KIND] == "external"
    assert theirs.attrs[schema.ATTR_PAPER_START_LAYER] == ours.attrs[schema.ATTR_PAPER_START_LAYER] == 0  # as LP/FT
    assert (tmp_path / "external" / "train_log.csv").read_text().splitlines() == ["epoch,loss,accuracy"]


def test_whole_model_gives_exactly_zero_shot_of_the_same_weights(tiny_model_spec: dict, synthetic_spec: dict,
                                                                  tmp_path: Path) -> None:
    """A whole open_clip state dict inside a DDP training checkpoint equals zero-shot with ``pretrained: <it>``."""
    state = create_adapter({**tiny_model_spec, "seed": 1}).whole_model().state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{key}": value for key, value in state.items()}},
               tmp_path / "epoch_3.pt")
    zero_shot = train_checkpoint({**tiny_model_spec, "pretrained": str(tmp_path / "plain.pt")}, dict(synthetic_spec),
                                 {"kind": "zero_shot"}, "train", tmp_path / "zs", device="cpu")
    external = {"kind": "external", "weights": str(tmp_path / "epoch_3.pt"), "key_prefix": "state_dict.module."}
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), external, "train",
                                  tmp_path / "external", device="cpu")
    ours = _cache(zero_shot, synthetic_spec, tmp_path / "ours.zarr")
    theirs = _cache(checkpoint, synthetic_spec, tmp_path / "theirs.zarr")
    assert_same_caches(ours, theirs)
    assert theirs.attrs[schema.ATTR_PAPER_START_LAYER] == 3  # a prompt head: the last block, as zero-shot
    base = create_adapter(dict(tiny_model_spec))
    assert not torch.equal(base.whole_model().state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])


def test_head_rows_are_matched_to_the_dataset_by_name(finetuned: Path, tiny_model_spec: dict,
                                                      tmp_path: Path) -> None:
    """A head whose rows list the classes in another order gives the same classifier, once matched by name."""
    classifier, _ = load_checkpoint(finetuned)
    weight, bias = classifier.head.linear.weight.detach(), classifier.head.linear.bias.detach()
    order = [2, 0, 3, 1]
    save_file({"weight": weight[order].contiguous(), "bias": bias[order].contiguous()}, tmp_path / "head.safetensors")
    (tmp_path / "classes.txt").write_text("".join(f"{CLASSES[i]}\n" for i in order))
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = classifier.head(classifier.adapter.encode_image(pixels))
    for names in (str(tmp_path / "classes.txt"), [CLASSES[i] for i in order]):
        method = create_method({"kind": "external", "head": str(tmp_path / "head.safetensors"), "head_classes": names})
        built = method.build(classifier.adapter, CLASSES)
        torch.testing.assert_close(built(pixels), reference, rtol=0, atol=0)
    unmatched = create_method({"kind": "external", "head": str(tmp_path / "head.safetensors")}).build(
        classifier.adapter, CLASSES)  # rows taken in the dataset's order: another classifier
    assert not torch.equal(unmatched(pixels), reference)


@pytest.mark.parametrize("adapter", sorted(TINY_ADAPTER_SPECS))
def test_whole_model_of_every_adapter(adapter: str, tmp_path: Path) -> None:
    """Each family's whole state dict (a transformers model: its ``save_pretrained`` directory) loads, or
    the family says to load the image tower instead."""
    spec = TINY_ADAPTER_SPECS[adapter]
    source, target = create_adapter({**spec, "seed": 1}), create_adapter(dict(spec))
    method = create_method({"kind": "external", "weights": str(tmp_path / "weights")})
    try:
        model = source.whole_model()
    except ConfigError as error:
        assert "weights_of: image_tower" in str(error)
        with pytest.raises(ConfigError, match="weights_of: image_tower"):
            method.build(target, CLASSES)
        return
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(tmp_path / "weights")
    else:
        torch.save(model.state_dict(), tmp_path / "weights")
    method.build(target, CLASSES)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(target.encode_image(pixels), source.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(target.encode_text(["a photo of a disk."]), source.encode_text(["a photo of a disk."]),
                                   rtol=0, atol=0)


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def tower_state(tiny_adapter) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in tiny_adapter.image_tower().state_dict().items()}


def _build(tiny_model_spec: dict, **spec) -> None:
    create_method({"kind": "external", **spec}).build(create_adapter(dict(tiny_model_spec)), CLASSES)


def test_keys_that_do_not_fit_are_listed(tower_state: dict, tiny_model_spec: dict, tmp_path: Path) -> None:
    state = dict(tower_state)
    del state["conv1.weight"]
    state["head.weight"] = torch.zeros(2)
    state["proj"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "tower.pt")
    with pytest.raises(ConfigError) as caught:
        _build(tiny_model_spec, weights=str(tmp_path / "tower.pt"), weights_of="image_tower")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'tower.pt'}: the weights do not fit the image tower of open_clip model")
    assert "1 missing (conv1.weight)" in message and "1 unexpected (head.weight)" in message
    assert "1 of another shape (proj [3, 3], model [64, 32])" in message and "\n" not in message


def test_a_prefix_that_would_fit_is_named(tiny_model_spec: dict, tmp_path: Path) -> None:
    state = create_adapter(dict(tiny_model_spec)).whole_model().state_dict()
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "ddp.pt")
    with pytest.raises(ConfigError, match=r"the file holds them under 'module\.': set key_prefix: 'module\.'"):
        _build(tiny_model_spec, weights=str(tmp_path / "ddp.pt"))
    with pytest.raises(ConfigError, match=r"set key_prefix: 'module\.visual\.'"):  # a whole model as a tower
        _build(tiny_model_spec, weights=str(tmp_path / "ddp.pt"), weights_of="image_tower")
    with pytest.raises(ConfigError, match=r"under key_prefix 'visual\.' do not fit"):
        _build(tiny_model_spec, weights=str(tmp_path / "ddp.pt"), key_prefix="visual.")
    _build(tiny_model_spec, weights=str(tmp_path / "ddp.pt"), weights_of="image_tower", key_prefix="module.visual.")


def test_fitting_prefix() -> None:
    keys = ["a.x.w", "a.x.b", "a.y", "b.x.w"]
    assert fitting_prefix(keys, ["x.w", "x.b"]) == "a."
    assert fitting_prefix(keys, ["x.w"]) == "a."  # the first of "a." and "b."
    assert fitting_prefix(keys, ["x.w", "z"]) is None
    assert fitting_prefix(keys, ["a.y"]) == ""


@pytest.mark.parametrize(("rows", "names", "error"), [
    (5, None, "the head has 5 rows (classes) but the dataset has 4 classes; set head_classes"),
    (4, ["disk", "square", "triangle"], "head_classes names 3 classes but the head in"),
    (4, ["disk", "square", "triangle", "star"], "1 unknown to the dataset (star); 1 dataset classes without a row (cross)"),
    (4, ["disk", "square", "disk", "cross"], "1 named twice (disk); 1 dataset classes without a row (triangle)"),
])
def test_classes_that_disagree_with_the_dataset(rows: int, names: list[str] | None, error: str, tiny_model_spec: dict,
                                                tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(rows, 32), "bias": torch.zeros(rows)}, tmp_path / "head.pt")
    spec = {"head": str(tmp_path / "head.pt"), **({"head_classes": names} if names else {})}
    with pytest.raises(ConfigError, match=re.escape(error)) as caught:
        _build(tiny_model_spec, **spec)
    assert str(caught.value).startswith("head_classes: " if names else f"{tmp_path / 'head.pt'}: ")


@pytest.mark.parametrize(("content", "options", "error"), [
    ({"linear.weight": torch.zeros(4, 32), "linear.bias": torch.zeros(4)}, {},
     r"needs exactly the keys 'weight' and 'bias', found 2 keys \(linear.bias, linear.weight\); the file holds them "
     r"under 'linear\.': set head_prefix: 'linear\.'"),
    ({"weight": torch.zeros(4, 32)}, {}, r"found 1 keys \(weight\)$"),
    ({"weight": torch.zeros(4, 32, 1), "bias": torch.zeros(4)}, {}, r"weight \[C, D\] and bias \[C\], found weight \[4, 32, 1\]"),
    ({"weight": torch.zeros(4, 48), "bias": torch.zeros(4)}, {}, "takes 48-dimensional embeddings, but the image "
     "embeddings of 'rationality-tiny-vit' have 32"),
])
def test_heads_that_do_not_fit(content: dict, options: dict, error: str, tiny_model_spec: dict, tmp_path: Path) -> None:
    torch.save(content, tmp_path / "head.pt")
    with pytest.raises(ConfigError, match=error):
        _build(tiny_model_spec, head=str(tmp_path / "head.pt"), **options)


def test_unreadable_files(tiny_model_spec: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'absent.pt'}: weights file does not exist$"):
        _build(tiny_model_spec, weights=str(tmp_path / "absent.pt"))
    (tmp_path / "garbage.safetensors").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="garbage.safetensors: not a readable weights file"):
        _build(tiny_model_spec, weights=str(tmp_path / "garbage.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: a weights directory must hold one of model.safetensors"):
        read_tensors(tmp_path / "empty")
    torch.save({"epoch": 3}, tmp_path / "no-tensors.pt")
    with pytest.raises(ConfigError, match="no-tensors.pt: holds no tensors"):
        read_tensors(tmp_path / "no-tensors.pt")
    torch.save({"weight": torch.zeros(4, 32), "bias": torch.zeros(4)}, tmp_path / "head.pt")
    with pytest.raises(ConfigError, match="classes.txt: head_classes file is not readable"):
        _build(tiny_model_spec, head=str(tmp_path / "head.pt"), head_classes=str(tmp_path / "classes.txt"))


def test_sharded_save_pretrained_directory(tmp_path: Path) -> None:
    first, second = {"a.weight": torch.ones(2)}, {"b.weight": torch.zeros(3)}
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", '
        '"b.weight": "model-00002-of-00002.safetensors"}}')
    tensors = read_tensors(tmp_path)
    assert sorted(tensors) == ["a.weight", "b.weight"] and torch.equal(tensors["b.weight"], torch.zeros(3))


@pytest.mark.parametrize(("spec", "error"), [
    ({}, "set weights"),
    ({"weights": "w.pt", "weights_of": "text_tower"}, "weights_of: 'text_tower' is not allowed; allowed: model, "
                                                       "image_tower"),
    ({"weights": "w.pt", "head_classes": ["a"]}, "head_classes, head_prefix and normalize_features describe a linear "
                                                 "head"),
    ({"head": "h.pt", "head_classes": [1, 2]}, "head_classes: must be a list of class names or a text file, got [1, 2]"),
    ({"head": "h.pt", "normalize_features": "yes"}, "normalize_features: must be true or false, got 'yes'"),
])
def test_spec_errors(spec: dict, error: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(error)):
        create_method({"kind": "external", **spec})


def test_what_the_method_declares() -> None:
    head = create_method({"kind": "external", "head": "h.pt", "head_classes": "classes.txt"})
    assert head.input_files() == ["h.pt", "classes.txt"]
    assert (head.paper_start_layer, head.trains_image_tower, head.uses_training_split) == ("first", False, False)
    whole = create_method({"kind": "external", "weights": "w", "head": "h.pt", "head_classes": ["a"]})
    assert whole.input_files() == ["w", "h.pt"] and whole.trains_image_tower
    assert create_method({"kind": "external", "weights": "w"}).paper_start_layer == "last"
    assert create_method(whole.to_dict()) == whole  # what checkpoints store rebuilds the method


def test_evaluating_needs_no_training_split(tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    """Neither zero-shot nor external runs read the training split: a dataset without one is fine."""
    for kind in ({"kind": "zero_shot"}, {"kind": "external", "weights": str(tmp_path / "w.pt")}):
        torch.save(create_adapter(dict(tiny_model_spec)).whole_model().state_dict(), tmp_path / "w.pt")
        train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), kind, "no-such-split", tmp_path / kind["kind"],
                         device="cpu")
