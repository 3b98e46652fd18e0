"""Model specs, the open_clip adapter's checks, seeded weights, checkpoints and method specs."""

from __future__ import annotations

import re
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from rationality.data import create_dataset
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError, StoreError
from rationality.methods import create_method, list_methods
from rationality.models import LinearHead, ModelSpec, create_adapter
from rationality.models.checkpoint import load_checkpoint, state_sha256
from rationality.models.openclip import check_quick_gelu, is_torchscript_archive
from rationality.methods._training import Run
from rationality.train import CHECKPOINT_FILE, TRAIN_LOG_FILE, train_checkpoint

# --------------------------------------------------------------------------- QuickGELU (no model is built)


def test_quick_gelu_mismatch_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("'ViT-B-32-quickgelu'")) as caught:
        check_quick_gelu("ViT-B-32", "openai", {})
    assert "QuickGELU" in str(caught.value)


def test_quick_gelu_matches() -> None:
    check_quick_gelu("ViT-B-32-quickgelu", "openai", {})
    check_quick_gelu("ViT-B-32", "openai", {"force_quick_gelu": True})
    check_quick_gelu("ViT-B-32", None, {})  # random init: nothing to compare with


def test_gelu_weights_on_quick_gelu_model_are_refused() -> None:
    check_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", {})  # trained with GELU
    with pytest.raises(ConfigError, match=re.escape("use name 'ViT-B-32'")):
        check_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", {"force_quick_gelu": True})


def test_local_weights_file_is_not_judged(tmp_path: Path) -> None:
    """A local file carries no record of its activation: a -quickgelu model may load it."""
    check_quick_gelu("ViT-B-16-quickgelu", str(tmp_path / "openai-vit-b-16.pt"), {})
    check_quick_gelu("ViT-B-16", str(tmp_path / "laion-vit-b-16.pt"), {})


# --------------------------------------------------------------------------- specs and adapters


def test_unknown_adapter() -> None:
    with pytest.raises(ConfigError, match="unknown model adapter 'nope'") as caught:
        create_adapter({"adapter": "nope", "name": "x"})
    assert "open_clip" in str(caught.value)


def test_declared_adapters_register_themselves_when_first_built() -> None:
    """Listing and checking adapter names imports no model library; each declared module registers its name."""
    import subprocess
    import sys

    listed = subprocess.run(
        [sys.executable, "-c", "import sys; from rationality.models.base import list_adapters, check_adapter; "
                               "names = list_adapters(); check_adapter('blip'); "
                               "print(names, [m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules])"],
        capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == "['albef', 'blip', 'open_clip'] []"
    from rationality.models.base import _ADAPTERS, VisionLanguageAdapter

    for name in _ADAPTERS.names():  # get() imports the declared module and checks that it registered the name
        assert issubclass(_ADAPTERS.get(name), VisionLanguageAdapter)


def test_a_declared_module_must_register_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from rationality.models.base import _ADAPTERS

    monkeypatch.setitem(_ADAPTERS._declared, "nope", "rationality.models.heads")
    with pytest.raises(ValueError, match="'nope' is declared in rationality.models.heads, which does not register"):
        _ADAPTERS.get("nope")


def test_unknown_open_clip_model() -> None:
    with pytest.raises(ConfigError, match="unknown open_clip model 'no-such-vit'"):
        create_adapter({"adapter": "open_clip", "name": "no-such-vit"})


def test_unknown_weights(tiny_model_spec: dict, tmp_path: Path) -> None:
    """No download is attempted: open_clip refuses an unknown tag or a missing file up front."""
    for pretrained in ("no-such-tag", str(tmp_path / "missing.pt")):
        with pytest.raises(ConfigError, match=re.escape(pretrained)):
            create_adapter({**tiny_model_spec, "pretrained": pretrained})


def test_patch_size_mismatch(tiny_model_spec: dict) -> None:
    with pytest.raises(ConfigError, match="8x8 token grid.*patch_size: 16"):
        create_adapter({**tiny_model_spec, "patch_size": 16})


def test_input_size_mismatch(tiny_model_spec: dict) -> None:
    with pytest.raises(ConfigError, match="64 px") as caught:
        create_adapter({**tiny_model_spec, "input_size": 224})
    assert "224" in str(caught.value)


def test_spec_checks() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        ModelSpec.from_dict({"adapter": "open_clip", "name": "x", "bogus": 1})
    with pytest.raises(ConfigError, match="image_normalization"):
        ModelSpec.from_dict({"adapter": "open_clip", "name": "x", "image_normalization": "cifar"})
    spec = ModelSpec.from_dict({"adapter": "open_clip", "name": "x", "seed": 3, "options": {"a": 1}})
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_tiny_adapter_contract(tiny_adapter) -> None:
    assert tiny_adapter.grid == (8, 8) and tiny_adapter.num_blocks == 4
    assert (tiny_adapter.geometry.resize, tiny_adapter.geometry.crop) == (64, 64)
    assert not tiny_adapter.training
    assert tiny_adapter.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    assert tiny_adapter.encode_text(["a", "b", "c"]).shape == (3, 32)


def test_image_normalization_choice(tiny_model_spec: dict, tiny_adapter) -> None:
    import open_clip

    assert tiny_adapter.normalization == (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    imagenet = create_adapter({**tiny_model_spec, "image_normalization": "imagenet"})
    assert imagenet.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_seeded_weights(tiny_model_spec: dict, tiny_adapter) -> None:
    same = create_adapter({**tiny_model_spec, "seed": 0})
    other = create_adapter({**tiny_model_spec, "seed": 1})
    assert state_sha256(same.image_tower()) == state_sha256(tiny_adapter.image_tower())
    assert state_sha256(other.image_tower()) != state_sha256(tiny_adapter.image_tower())
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(same.encode_image(pixels), tiny_adapter.encode_image(pixels))


def test_state_sha256_sees_every_byte() -> None:
    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    module.register_buffer("scale", torch.tensor(2.0))  # a 0-dim tensor
    digest = state_sha256(module)
    assert digest == state_sha256(module)
    with torch.no_grad():
        module.weight[1, 2] += 1e-6
    changed = state_sha256(module)
    assert changed != digest
    module.scale.fill_(3.0)
    assert state_sha256(module) != changed


# --------------------------------------------------------------------------- checkpoints

LINEAR_PROBE = {"kind": "linear_probe", "epochs": 1, "batch_size": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def probe_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_spec: dict, tiny_model_spec: dict) -> Path:
    out = tmp_path_factory.mktemp("probe")
    return train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), dict(LINEAR_PROBE), "train", out, seed=0)


def _test_pixels(synthetic_spec: dict, adapter) -> torch.Tensor:
    reader = create_dataset(synthetic_spec["reader"], synthetic_spec["root"])
    images = ImageDataset(reader, reader.samples("test"), adapter.geometry, *adapter.normalization)
    return torch.stack([images[i][0] for i in range(len(images))])


def test_checkpoint_round_trip(probe_checkpoint: Path, synthetic_spec: dict, tiny_model_spec: dict) -> None:
    assert probe_checkpoint.name == CHECKPOINT_FILE
    log = (probe_checkpoint.parent / TRAIN_LOG_FILE).read_text().splitlines()
    assert log[0] == "epoch,loss,accuracy" and len(log) == 2

    classifier, meta = load_checkpoint(probe_checkpoint)
    assert not classifier.training
    assert meta["class_names"] == ["disk", "square", "triangle", "cross"]
    assert meta["method"]["kind"] == "linear_probe" and meta["method"]["lr"] == 1e-2
    assert meta["dataset"] == "synth" and meta["model"]["name"] == "rationality-tiny-vit"

    # Train the same classifier again, in memory, and compare its logits with the loaded one's.
    adapter = create_adapter(tiny_model_spec)
    reader = create_dataset(synthetic_spec["reader"], synthetic_spec["root"])
    train = ImageDataset(reader, reader.samples("train"), adapter.geometry, *adapter.normalization)
    trained = create_method(dict(LINEAR_PROBE)).fit(adapter, reader.class_names, train,
                                                     Run(probe_checkpoint.parent / "again", seed=0)).eval()
    pixels = _test_pixels(synthetic_spec, adapter)
    with torch.no_grad():
        expected, loaded = trained(pixels), classifier(pixels)
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=0)
    torch.manual_seed(0)  # the head as LinearProbe initialises it, before training
    initial = LinearHead(32, 4)
    assert (classifier.head.linear.weight - initial.linear.weight).abs().max() > 1e-3  # training moved it


def test_finetune_checkpoint_stores_the_tower(tmp_path: Path, synthetic_spec: dict, tiny_model_spec: dict,
                                              tiny_adapter) -> None:
    method = {"kind": "finetune", "epochs": 1, "batch_size": 8, "lr": 1e-3}
    path = train_checkpoint(tiny_model_spec, synthetic_spec, method, "train", tmp_path, seed=0)
    classifier, meta = load_checkpoint(path)
    assert meta["method"]["kind"] == "finetune"
    assert state_sha256(classifier.adapter.image_tower()) != state_sha256(tiny_adapter.image_tower())
    assert meta["base_image_tower_sha256"] == state_sha256(tiny_adapter.image_tower())
    payload = torch.load(path, weights_only=True)
    expected = {name: tensor for name, tensor in payload["image_tower_state"].items()}
    for name, tensor in classifier.adapter.image_tower().state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(StoreError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing"):
        load_checkpoint(tmp_path / "absent.pt")


def test_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(StoreError, match="not a rationality checkpoint"):
        load_checkpoint(path)


def test_base_weights_mismatch(probe_checkpoint: Path, tmp_path: Path) -> None:
    payload = torch.load(probe_checkpoint, weights_only=True)
    payload["base_image_tower_sha256"] = "f" * 64
    path = tmp_path / "tampered.pt"
    torch.save(payload, path)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_changed_seed_is_caught(probe_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint rebuilt from another random initialisation than it was trained on is refused."""
    payload = torch.load(probe_checkpoint, weights_only=True)
    payload["model"]["seed"] = 1
    path = tmp_path / "reseeded.pt"
    torch.save(payload, path)
    with pytest.raises(ConfigError, match="sha256"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- method specs


def test_float_from_yaml_1_1_text() -> None:
    method = create_method({"kind": "linear_probe", "lr": "1e-3"})
    assert isinstance(method.lr, float) and method.lr == 0.001
    assert create_method({"kind": "finetune", "lr": 1}).lr == 1.0
    assert isinstance(create_method({"kind": "finetune", "lr": 1}).lr, float)


def test_method_defaults_and_round_trip() -> None:
    method = create_method({"kind": "linear_probe", "epochs": 3})
    assert (method.epochs, method.lr, method.batch_size) == (3, 1e-3, 32)
    assert create_method(method.to_dict()) == method
    assert create_method({"kind": "zero_shot"}).prompts(["big_cat"]) == ["a photo of a big cat."]


def test_unknown_hyper_parameter() -> None:
    with pytest.raises(ConfigError, match="momentum") as caught:
        create_method({"kind": "linear_probe", "momentum": 0.9})
    assert "lr" in str(caught.value)


@pytest.mark.parametrize(("name", "value"), [("epochs", "ten"), ("epochs", 2.5), ("epochs", True),
                                             ("lr", "fast"), ("normalize_features", "yes")])
def test_wrong_type(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        create_method({"kind": "linear_probe", name: value})


def test_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="'prompt_tuning'") as caught:
        create_method({"kind": "prompt_tuning"})
    assert all(kind in str(caught.value) for kind in ("finetune", "linear_probe", "zero_shot"))
    assert set(list_methods()) >= {"finetune", "linear_probe", "zero_shot"}


# --------------------------------------------------------------------------- local weights files


def _seeded_tiny_clip(seed: int, **options) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model("rationality-tiny-vit", **options).eval()


@pytest.fixture(scope="module")
def openai_style_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A TorchScript archive with fp16 weights, as OpenAI's ``clip`` package ships them, and its state."""
    model = _seeded_tiny_clip(3, force_quick_gelu=True)
    traced = torch.jit.trace_module(model, {"encode_image": torch.ones(1, 3, 64, 64)},
                                    check_trace=False).half()
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    return path, traced.state_dict()


def test_torchscript_archive_loads_into_fp32_without_rounding(tiny_model_spec: dict, openai_style_archive) -> None:
    path, archived = openai_style_archive
    assert is_torchscript_archive(path)
    adapter = create_adapter({**tiny_model_spec, "pretrained": str(path), "options": {"force_quick_gelu": True}})
    loaded = adapter.model.state_dict()
    assert set(loaded) == set(archived) - {"attn_mask"}
    for key, value in loaded.items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, archived[key].float()), key


def test_torchscript_archive_needs_quick_gelu(tiny_model_spec: dict, openai_style_archive) -> None:
    path, _ = openai_style_archive
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*QuickGELU.*rationality-tiny-vit-quickgelu"):
        create_adapter({**tiny_model_spec, "pretrained": str(path)})


def test_state_dict_file_loads(tiny_model_spec: dict, tmp_path: Path) -> None:
    model = _seeded_tiny_clip(4)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    assert not is_torchscript_archive(path)
    adapter = create_adapter({**tiny_model_spec, "pretrained": str(path)})
    for key, value in adapter.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_weights_of_another_architecture_are_refused(tiny_model_spec: dict, tmp_path: Path) -> None:
    state = _seeded_tiny_clip(4).state_dict()
    state["visual.proj"] = torch.zeros(64, 16)  # a different embedding width
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match="(?s)" + re.escape(str(path)) + ".*does not fit.*visual.proj"):
        create_adapter({**tiny_model_spec, "pretrained": str(path)})


def test_open_clip_model_without_a_vit_tower_is_refused() -> None:
    with pytest.raises(ConfigError, match="'RN50' has no ViT image tower"):
        create_adapter({"adapter": "open_clip", "name": "RN50"})
