"""The synthetic dataset generator, its reader's checks, and the tensor dataset on top of it."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rationality.data import create_dataset
from rationality.data.geometry import Geometry
from rationality.data.loader import ImageDataset, make_loader
from rationality.data.synthetic import CLASS_NAMES, SyntheticReader, generate_synthetic_dataset
from rationality.errors import ConfigError, DataError

COUNTS = {"train": 3, "test": 2}
SIZE = (48, 40)


def _generate(root: Path, seed: int = 0) -> Path:
    generate_synthetic_dataset(root, samples_per_class=COUNTS, image_size=SIZE, seed=seed)
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated dataset, shared read-only by the tests of this module."""
    return _generate(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def copy_root(dataset_root: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(dataset_root, tmp_path / "copy"))


def _all_samples(reader: SyntheticReader):
    return [sample for split in COUNTS for sample in reader.samples(split)]


def test_counts_labels_and_ids(dataset_root: Path) -> None:
    reader = create_dataset("synthetic", dataset_root)
    assert reader.class_names == CLASS_NAMES
    for split, per_class in COUNTS.items():
        samples = reader.samples(split)
        assert Counter(sample.label for sample in samples) == {label: per_class for label in range(4)}
        for sample in samples:
            match = re.fullmatch(r"(\w+)-(\w+)-(\d{4})", sample.id)
            assert match is not None, sample.id
            assert match[1] == split
            assert CLASS_NAMES.index(match[2]) == sample.label
            assert sample.image_path == dataset_root / "images" / f"{sample.id}.png"


def test_masks_and_orientations(dataset_root: Path) -> None:
    reader = create_dataset("synthetic", dataset_root)
    sizes = set()
    for sample in _all_samples(reader):
        image = reader.load_image(sample)
        mask = reader.load_mask(sample)
        assert mask.dtype == bool
        assert mask.shape == (image.height, image.width)
        assert 0.01 < mask.mean() < 0.3, (sample.id, mask.mean())
        sizes.add(image.size)
    assert sizes == {SIZE, SIZE[::-1]}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_generation_is_deterministic(dataset_root: Path, tmp_path: Path) -> None:
    same = _file_bytes(_generate(tmp_path / "same", seed=0))
    assert same == _file_bytes(dataset_root)
    other = _file_bytes(_generate(tmp_path / "other", seed=1))
    assert other.keys() == same.keys()
    assert other["samples.csv"] == same["samples.csv"]
    assert all(other[name] != same[name] for name in same if name.startswith("images/"))


def test_worker_processes_write_the_same_files(dataset_root: Path, tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path / "parallel", samples_per_class=COUNTS, image_size=SIZE, seed=0, workers=2)
    assert _file_bytes(tmp_path / "parallel") == _file_bytes(dataset_root)


def test_background_bias_tints_only_training_images(tmp_path: Path) -> None:
    biased = tmp_path / "biased"
    generate_synthetic_dataset(biased, samples_per_class=COUNTS, image_size=SIZE, background_bias=1.0)
    unbiased = _file_bytes(_generate(tmp_path / "unbiased"))
    biased_files = _file_bytes(biased)
    for name, content in biased_files.items():
        if name.startswith("images/train-"):
            assert content != unbiased[name]
        else:
            assert content == unbiased[name]  # test images, masks and index are unchanged


def test_corrupt_image(copy_root: Path) -> None:
    reader = create_dataset("synthetic", copy_root)
    sample = reader.samples("train")[0]
    sample.image_path.write_bytes(b"not a png")
    with pytest.raises(DataError, match=re.escape(str(sample.image_path))):
        reader.load_image(sample)


def test_mask_threshold_is_a_fraction_of_255(copy_root: Path) -> None:
    reader = create_dataset("synthetic", copy_root)
    sample = reader.samples("test")[0]
    mask_path = copy_root / "masks" / f"{sample.id}.png"
    width, height = Image.open(mask_path).size
    bands = np.array([0, 127, 128, 255], np.uint8)[np.arange(width) * 4 // width]  # four vertical bands
    Image.fromarray(np.tile(bands, (height, 1)), mode="L").save(mask_path)
    for threshold, object_bands in ((0.5, [128, 255]), (127 / 255, [127, 128, 255]), (1.0, [255])):
        mask = create_dataset("synthetic", copy_root, mask_threshold=threshold).load_mask(sample)
        np.testing.assert_array_equal(mask, np.tile(np.isin(bands, object_bands), (height, 1)))


@pytest.mark.parametrize("options", [{"mask_threshold": 0}, {"mask_threshold": 128}, {"threshold": 0.5}])
def test_invalid_options(dataset_root: Path, options: dict) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        create_dataset("synthetic", dataset_root, **options)


def test_missing_mask(copy_root: Path) -> None:
    reader = create_dataset("synthetic", copy_root)
    sample = reader.samples("test")[1]
    mask_path = copy_root / "masks" / f"{sample.id}.png"
    mask_path.unlink()
    with pytest.raises(DataError, match=re.escape(str(mask_path))):
        reader.load_mask(sample)


def test_corrupt_mask(copy_root: Path) -> None:
    reader = create_dataset("synthetic", copy_root)
    sample = reader.samples("test")[0]
    mask_path = copy_root / "masks" / f"{sample.id}.png"
    mask_path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(str(mask_path))):
        reader.load_mask(sample)


def test_mask_size_mismatch(copy_root: Path) -> None:
    reader = create_dataset("synthetic", copy_root)
    sample = reader.samples("train")[0]
    mask_path = copy_root / "masks" / f"{sample.id}.png"
    Image.new("L", (SIZE[0] + 1, SIZE[1]), 255).save(mask_path)
    with pytest.raises(DataError, match=re.escape(str(mask_path))) as caught:
        reader.load_mask(sample)
    assert "49x40" in str(caught.value) and "48x40" in str(caught.value)


def test_unknown_split(dataset_root: Path) -> None:
    reader = create_dataset("synthetic", dataset_root)
    with pytest.raises(DataError, match=re.escape(str(dataset_root / "samples.csv"))) as caught:
        reader.samples("val")
    assert "test" in str(caught.value) and "train" in str(caught.value)


def _append_row(root: Path, row: str) -> Path:
    index = root / "samples.csv"
    index.write_text(index.read_text() + row + "\n")
    return index


def test_unknown_class_in_index(copy_root: Path) -> None:
    index = _append_row(copy_root, "train-hexagon-0000,hexagon,train")
    with pytest.raises(DataError, match=re.escape(str(index))) as caught:
        create_dataset("synthetic", copy_root)
    assert "hexagon" in str(caught.value)


def test_duplicate_id_in_index(copy_root: Path) -> None:
    index = _append_row(copy_root, "train-disk-0000,disk,train")
    with pytest.raises(DataError, match=re.escape(str(index))) as caught:
        create_dataset("synthetic", copy_root)
    assert "duplicate" in str(caught.value)


@pytest.mark.parametrize("name", ["classes.txt", "samples.csv"])
def test_missing_index_file(copy_root: Path, name: str) -> None:
    (copy_root / name).unlink()
    with pytest.raises(DataError, match=re.escape(str(copy_root / name))):
        create_dataset("synthetic", copy_root)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent"))):
        create_dataset("synthetic", tmp_path / "absent")


def test_unknown_reader(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synthetic"):
        create_dataset("nope", tmp_path)


def test_image_dataset(dataset_root: Path) -> None:
    reader = create_dataset("synthetic", dataset_root)
    samples = reader.samples("test")
    geometry = Geometry(36, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dataset = ImageDataset(reader, samples, geometry, mean, std)
    assert len(dataset) == len(samples)

    pixels, label, index = dataset[5]
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 32, 32)
    assert (label, index) == (samples[5].label, 5)
    raw = np.asarray(geometry.apply_image(reader.load_image(samples[5])), dtype=np.float64) / 255.0
    expected = (raw - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_loader_shuffle_is_seeded(dataset_root: Path) -> None:
    reader = create_dataset("synthetic", dataset_root)
    dataset = ImageDataset(reader, reader.samples("train"), Geometry(16, 16), (0.5,) * 3, (0.5,) * 3)

    def order(seed: int) -> list[int]:
        return [i for _, _, indices in make_loader(dataset, 4, shuffle=True, seed=seed) for i in indices.tolist()]

    assert order(3) == order(3)
    assert sorted(order(3)) == list(range(len(dataset)))
    assert order(3) != order(4)
    unshuffled = [i for _, _, indices in make_loader(dataset, 5, shuffle=False, seed=0) for i in indices.tolist()]
    assert unshuffled == list(range(len(dataset)))
