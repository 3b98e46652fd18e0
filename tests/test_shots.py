"""Few-shot training subsets: exact counts, a draw that is stable per class, errors that list the short classes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from rationality.data.base import Sample
from rationality.data.shots import few_shot_samples
from rationality.errors import ConfigError, DataError
from rationality.methods import create_method
from rationality.models.checkpoint import load_checkpoint
from rationality.train import train_checkpoint

CLASSES = ("a", "b", "c")


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(f"{CLASSES[label]}-{index:03d}", label, Path(f"{label}-{index}.png"))
            for label, count in counts.items() for index in range(count)]


def test_shots_per_class_in_input_order() -> None:
    samples = _samples({0: 10, 1: 7, 2: 3})
    chosen = few_shot_samples(samples, 3, seed=0, class_names=CLASSES, where="here")
    assert Counter(sample.label for sample in chosen) == {0: 3, 1: 3, 2: 3}
    assert chosen == [sample for sample in samples if sample in chosen]  # a subsequence of the split
    assert [s for s in chosen if s.label == 2] == [s for s in samples if s.label == 2]  # all of a class of 3


def test_a_class_draw_depends_only_on_seed_and_its_own_ids() -> None:
    samples = _samples({0: 20, 1: 20, 2: 20})
    reference = few_shot_samples(samples, 4, seed=7, class_names=CLASSES, where="here")
    shuffled = random.Random(0).sample(samples, len(samples))
    assert set(few_shot_samples(shuffled, 4, seed=7, class_names=CLASSES, where="here")) == set(reference)
    more_of_class_1 = _samples({0: 20, 1: 30, 2: 20})
    other = few_shot_samples(more_of_class_1, 4, seed=7, class_names=CLASSES, where="here")
    assert [s for s in other if s.label != 1] == [s for s in reference if s.label != 1]
    assert few_shot_samples(samples, 4, seed=8, class_names=CLASSES, where="here") != reference


def test_short_classes_are_an_error_not_a_smaller_set() -> None:
    with pytest.raises(DataError, match=r"cub/train: shots 5 .* 2 classes have fewer: b \(4\), c \(0\)"):
        few_shot_samples(_samples({0: 5, 1: 4}), 5, seed=0, class_names=CLASSES, where="cub/train")


def test_shots_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="shots must be at least 1"):
        create_method({"kind": "linear_probe", "shots": 0})
    assert create_method({"kind": "coop", "shots": 16}).shots == 16
    assert create_method({"kind": "coop", "shots": None}).shots is None


def test_tip_adapter_cache_holds_the_shots(tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    method = {"kind": "tip_adapter_f", "epochs": 1, "batch_size": 4, "shots": 2}
    checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), method, "train", tmp_path, device="cpu")
    head = load_checkpoint(checkpoint)[0].head
    assert head.keys.shape[0] == 2 * 4 and head.values.sum(dim=0).tolist() == [2.0] * 4
