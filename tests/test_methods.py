"""Every registered adaptation method trains a tiny model; the shared training loop resumes and honours its options.

The registry tests are parametrised over :func:`rationality.methods.list_methods`, so a new method is
tested as soon as it is registered, with the test hyper-parameters of :data:`METHOD_OVERRIDES`:

* ``test_method_trains`` (fast): on the random-init tiny model, the training loss falls and the
  checkpoint loads into a classifier.
* ``test_method_beats_chance`` (slow): on the demo's pretrained tiny model (pretrained image-text on
  the synthetic ``pretrain`` split: the session fixture ``demo_pretrained``), test accuracy beats
  chance. The pretraining is the slow part (~2 minutes): a model that classifies zero-shot clearly
  above chance took 570 optimiser steps on 600 images; 25 to 130 steps left the loss on its ln(4)
  plateau and zero-shot at chance, and 150 steps on 160 images overfitted (0.33 zero-shot).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest
import torch

from rationality.data import create_dataset
from rationality.data.loader import ImageDataset
from rationality.data.synthetic import generate_synthetic_dataset
from rationality.errors import ConfigError
from rationality.methods import _training, create_method, list_methods
from rationality.methods._training import TRAIN_STATE_FILE
from rationality.models import create_adapter
from rationality.models.checkpoint import load_checkpoint
from rationality.train import TRAIN_LOG_FILE, train_checkpoint

#: Test hyper-parameters of every registered method: a few epochs that train in about a second.
#: A new method needs an entry here (its test fails until it has one).
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "zero_shot": {},
    "linear_probe": {"epochs": 3, "lr": 1e-2, "batch_size": 8},
    "finetune": {"epochs": 5, "lr": 3e-4, "batch_size": 8},
    "tip_adapter_f": {"epochs": 3, "batch_size": 8},
    "coop": {"epochs": 3, "batch_size": 8},
    "flcp": {"epochs": 3, "lr": 1e-4, "batch_size": 16},
    # Trains nothing: the whole state dict of the run's base model, which run_spec writes there.
    "external": {"weights": "base-model.pt"},
}
#: 4 classes.
CHANCE = 0.25
#: Accuracy every method must reach on the 100 test images of the pretrained setup. Measured (seed 0,
#: torch 2.14 CPU): zero_shot 0.58, linear_probe 0.51, finetune 0.51, tip_adapter_f 0.59, coop 0.59,
#: flcp 0.59; first -> last epoch loss: linear_probe 1.74 -> 1.06, finetune 1.91 -> 0.97,
#: tip_adapter_f 2.33 -> 2.26, coop 2.01 -> 1.90, flcp 3.72 -> 3.02.
MIN_ACCURACY = 0.4
#: The pretrained setup: images per class of its splits (the model: the demo's pretraining).
PRETRAINED_COUNTS = {"train": 10, "test": 25}


def method_spec(kind: str, **changes: Any) -> dict[str, Any]:
    """The test spec of a registered method, or a test failure that says what to add."""
    if kind not in METHOD_OVERRIDES:
        pytest.fail(f"method {kind!r} has no test hyper-parameters: add an entry for it to METHOD_OVERRIDES in "
                    f"{Path(__file__).name} (a few epochs and a batch size that train the tiny model in a second)")
    spec = {"kind": kind, **METHOD_OVERRIDES[kind], **changes}
    try:
        create_method(spec)
    except (ConfigError, TypeError) as exc:
        pytest.fail(f"method {kind!r} does not accept its test spec {spec}: {exc}. Add the options it needs to its "
                    f"entry in METHOD_OVERRIDES in {Path(__file__).name}")
    return spec


def run_spec(kind: str, model: dict[str, Any], work: Path, **changes: Any) -> dict[str, Any]:
    """The test spec of a method for a run on ``model``: for ``external``, with its weights file written
    into ``work`` from ``model`` itself (so that it classifies as zero-shot does)."""
    spec = method_spec(kind, **changes)
    if kind == "external":
        spec["weights"] = str(work / spec["weights"])
        torch.save(create_adapter(model).whole_model().state_dict(), spec["weights"])
    return spec


def losses(run_dir: Path) -> list[float]:
    """The per-epoch mean losses of a run's ``train_log.csv``, in epoch order."""
    with (run_dir / TRAIN_LOG_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
    return [float(row["loss"]) for row in rows]


def split_logits(checkpoint: Path, dataset: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] of the checkpoint's classifier on the ``test`` split, and the labels [N]."""
    classifier, _ = load_checkpoint(checkpoint)
    reader = create_dataset(dataset["reader"], dataset["root"])
    test = ImageDataset(reader, reader.samples("test"), classifier.adapter.geometry, *classifier.adapter.normalization)
    pixels = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([sample.label for sample in test.samples])
    with torch.no_grad():
        return torch.cat([classifier(batch) for batch in pixels.split(50)]), labels


def assert_loss_falls(run_dir: Path, epochs: int) -> list[float]:
    """A log of ``epochs`` finite losses whose last is below its first; returns them."""
    curve = losses(run_dir)
    assert len(curve) == epochs
    assert all(torch.isfinite(torch.tensor(curve))), curve
    if epochs:
        assert curve[-1] < curve[0], f"loss did not fall: {curve}"
    return curve


# --------------------------------------------------------------------------- every registered method


@pytest.mark.parametrize("kind", list_methods())
def test_method_trains(kind: str, tmp_path: Path, tiny_model_spec: dict, synthetic_spec: dict) -> None:
    """On the demo data each method trains the random-init tiny model: the loss falls, the checkpoint loads."""
    spec = run_spec(kind, tiny_model_spec, tmp_path)
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), spec, "train", tmp_path, device="cpu")
    assert_loss_falls(tmp_path, spec.get("epochs", 0))
    assert not (tmp_path / TRAIN_STATE_FILE).exists()
    logits, labels = split_logits(checkpoint, synthetic_spec)
    assert logits.shape == (len(labels), 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", list_methods())
def test_images_are_decoded_by_the_configured_workers(kind: str, tmp_path: Path, tiny_model_spec: dict,
                                                      synthetic_spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loader over images (feature extraction of LP, CoOp, Tip-Adapter-F; training of FT, FLCP) uses
    ``num_workers`` processes; loaders over embeddings already in memory use none."""
    loaders: list[tuple[str, int]] = []
    real_init = torch.utils.data.DataLoader.__init__

    def recording_init(self, dataset, *args, **kwargs):
        real_init(self, dataset, *args, **kwargs)
        loaders.append((type(dataset).__name__, self.num_workers))

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", recording_init)
    spec = run_spec(kind, tiny_model_spec, tmp_path, **({"epochs": 1} if "epochs" in METHOD_OVERRIDES[kind] else {}))
    train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), spec, "train", tmp_path, device="cpu", num_workers=2)
    image_loaders = [workers for dataset, workers in loaders if dataset == "ImageDataset"]
    assert image_loaders or kind in ("zero_shot", "external")
    assert set(image_loaders) <= {2}
    assert {workers for dataset, workers in loaders if dataset == "TensorDataset"} <= {0}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_model_spec: dict,
               demo_pretrained: Path) -> tuple[dict, dict]:
    """(model spec, dataset spec): the demo's pretrained tiny model, and synthetic data without a shortcut."""
    root = tmp_path_factory.mktemp("pretrained-setup")
    generate_synthetic_dataset(root / "data", samples_per_class=PRETRAINED_COUNTS, image_size=(80, 64), seed=0,
                               background_bias=0.0)
    dataset = {"name": "synth", "reader": "synthetic", "root": str(root / "data")}
    return {**tiny_model_spec, "pretrained": str(demo_pretrained)}, dataset


@pytest.mark.slow
@pytest.mark.parametrize("kind", list_methods())
def test_method_beats_chance(kind: str, tmp_path: Path, pretrained: tuple[dict, dict]) -> None:
    """On the demo data each method trains a tiny model: training loss falls and test accuracy beats chance."""
    model, dataset = pretrained
    spec = run_spec(kind, model, tmp_path)
    checkpoint = train_checkpoint(dict(model), dict(dataset), spec, "train", tmp_path, device="cpu")
    curve = assert_loss_falls(tmp_path, spec.get("epochs", 0))
    logits, labels = split_logits(checkpoint, dataset)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy >= MIN_ACCURACY > CHANCE, f"{kind}: test accuracy {accuracy:.3f} (losses {curve})"


# --------------------------------------------------------------------------- resuming


def interrupt_in_epoch(epoch: int) -> Callable[..., Iterable[Any]]:
    """A stand-in for the loop's DataLoader whose ``epoch``-th loader raises KeyboardInterrupt after one batch."""
    real = _training.DataLoader
    created = [0]

    def loader(*args: Any, **kwargs: Any) -> Iterable[Any]:
        batches = real(*args, **kwargs)
        created[0] += 1
        if created[0] < epoch:
            return batches

        def interrupted() -> Iterator[Any]:
            yield next(iter(batches))
            raise KeyboardInterrupt

        return interrupted()

    return loader


@pytest.mark.parametrize("kind", ["finetune", "linear_probe"])
def test_interrupted_training_resumes_to_the_same_weights(kind: str, tmp_path: Path, tiny_model_spec: dict,
                                                          synthetic_spec: dict, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    spec = method_spec(kind, epochs=3)
    args = (dict(tiny_model_spec), dict(synthetic_spec), spec, "train")
    uninterrupted = train_checkpoint(*args, tmp_path / "uninterrupted", device="cpu")

    resumed_dir = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(_training, "DataLoader", interrupt_in_epoch(2))
        with pytest.raises(KeyboardInterrupt):
            train_checkpoint(*args, resumed_dir, device="cpu")
    assert len(losses(resumed_dir)) == 1 and (resumed_dir / TRAIN_STATE_FILE).is_file()
    capsys.readouterr()
    resumed = train_checkpoint(*args, resumed_dir, device="cpu")
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert losses(resumed_dir) == losses(tmp_path / "uninterrupted")
    assert not (resumed_dir / TRAIN_STATE_FILE).exists()

    expected, found = (torch.load(path, weights_only=True) for path in (uninterrupted, resumed))
    assert (found["image_tower_state"] is None) == (kind == "linear_probe")
    for expected_state, found_state in ((expected["head"]["state"], found["head"]["state"]),
                                        (expected["image_tower_state"] or {}, found["image_tower_state"] or {})):
        assert found_state.keys() == expected_state.keys()
        for name, tensor in expected_state.items():
            assert torch.equal(found_state[name], tensor), name


# --------------------------------------------------------------------------- the loop's options


def head_weights(checkpoint: Path) -> torch.Tensor:
    """The weight [C, D] of a linear-probe checkpoint's head."""
    return torch.load(checkpoint, weights_only=True)["head"]["state"]["linear.weight"]


def test_adamw_weight_decay_changes_the_result(tmp_path: Path, tiny_model_spec: dict, synthetic_spec: dict) -> None:
    """Decoupled decay (AdamW) differs from Adam's L2 term; without decay the two optimisers agree."""
    weights = {}
    for optimizer in ("adam", "adamw"):
        for decay in (0.0, 0.5):
            spec = method_spec("linear_probe", optimizer=optimizer, weight_decay=decay)
            out = tmp_path / f"{optimizer}-{decay}"
            weights[optimizer, decay] = head_weights(train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec),
                                                                      spec, "train", out, device="cpu"))
    assert (weights["adam", 0.5] - weights["adamw", 0.5]).abs().max() > 1e-4
    assert (weights["adamw", 0.5] - weights["adamw", 0.0]).abs().max() > 1e-4
    assert torch.equal(weights["adam", 0.0], weights["adamw", 0.0])


@pytest.mark.parametrize("kind", ["linear_probe", "finetune"])
def test_bf16_trains_on_cpu(kind: str, tmp_path: Path, tiny_model_spec: dict, synthetic_spec: dict) -> None:
    spec = method_spec(kind, precision="bf16")
    fp32 = method_spec(kind)
    train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), spec, "train", tmp_path / "bf16", device="cpu")
    train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), fp32, "train", tmp_path / "fp32", device="cpu")
    bf16_curve = assert_loss_falls(tmp_path / "bf16", spec["epochs"])
    assert bf16_curve != losses(tmp_path / "fp32")  # autocast really ran


@pytest.mark.parametrize("kind", list_methods())
@pytest.mark.parametrize(("option", "value"), [("optimizer", "sgd"), ("precision", "fp8")])
def test_unknown_optimizer_or_precision(kind: str, option: str, value: str) -> None:
    """Refused when the method is created (methods without training reject the option as unknown)."""
    spec = method_spec(kind)
    with pytest.raises(ConfigError, match=option):
        create_method({**spec, option: value})
