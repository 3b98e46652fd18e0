"""The CUB-200-2011 reader on a tiny tree in the official layout with planted answers."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fixture_trees import FixtureInfo, assert_reader_matches, make_cub_tree
from rationality.data import create_dataset
from rationality.data.cub import CUBReader
from rationality.errors import ConfigError, DataError

INDEX_FILES = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    """One tree (segmentations next to CUB_200_2011), shared read-only by the tests of this module."""
    return make_cub_tree(tmp_path_factory.mktemp("cub"))


@pytest.fixture
def damaged(cub: FixtureInfo, tmp_path: Path) -> FixtureInfo:
    """A private copy of the tree that a test may damage."""
    shutil.copytree(cub.root.parent, tmp_path / "copy")
    return dataclasses.replace(cub, root=tmp_path / "copy" / cub.root.name)


def _reader(info: FixtureInfo, **options: object) -> CUBReader:
    return create_dataset("cub", info.root, **{**info.options, **options})


def _first(reader: CUBReader, split: str = "train"):
    return reader.samples(split)[0]


def _segmentation(reader: CUBReader, sample) -> Path:
    return reader.segmentations_dir / sample.image_path.relative_to(reader.root / "images").with_suffix(".png")


def test_planted_answers(cub: FixtureInfo) -> None:
    reader = _reader(cub)
    assert_reader_matches(reader, cub)
    assert [len(reader.samples(split)) for split in ("train", "test")] == [6, 6]
    assert reader.class_names == ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")
    assert all(re.fullmatch(r"cub-\d{5}", sample.id) for sample in reader.samples("test"))
    assert reader.skipped == []


def test_index_files_are_joined_by_id_not_line_position(cub: FixtureInfo) -> None:
    # The fixture shuffles the lines of two index files; the planted answers still hold.
    orders = {name: [line.split()[0] for line in (cub.root / name).read_text().splitlines()] for name in INDEX_FILES}
    assert orders["image_class_labels.txt"] != orders["images.txt"]
    assert orders["train_test_split.txt"] != orders["images.txt"]
    assert_reader_matches(_reader(cub), cub)


def test_segmentations_inside_root(tmp_path: Path) -> None:
    info = make_cub_tree(tmp_path, classes=2, images_per_class=2, segmentations_inside=True)
    reader = _reader(info)
    assert reader.segmentations_dir == info.root / "segmentations"
    assert_reader_matches(reader, info)


def test_segmentations_dir_option(damaged: FixtureInfo, tmp_path: Path) -> None:
    moved = shutil.move(damaged.root.parent / "segmentations", tmp_path / "elsewhere")
    with pytest.raises(DataError, match="segmentations_dir") as caught:
        _reader(damaged)
    assert str(damaged.root / "segmentations") in str(caught.value)
    assert str(damaged.root.parent / "segmentations") in str(caught.value)
    assert_reader_matches(_reader(damaged, segmentations_dir=str(moved)), damaged)


@pytest.mark.parametrize("threshold", [0.3, 0.4, 0.6, 0.7, 1.0])
def test_mask_threshold(cub: FixtureInfo, threshold: float) -> None:
    """value / 255 >= threshold; 0.4 and 0.6 tie exactly with the ring values 102 and 153."""
    reader = _reader(cub, mask_threshold=threshold)
    for split in reader.splits:
        for sample in reader.samples(split):
            assert reader.load_mask(sample).sum() == cub.samples[sample.id].area_at_threshold[threshold]


@pytest.mark.parametrize("options", [{"mask_threshold": 0}, {"mask_threshold": 1.5}, {"mask_threshold": "half"},
                                     {"expect_classes": 0}, {"missing_annotation": "ignore"}, {"colour": "red"}])
def test_invalid_options(cub: FixtureInfo, options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        _reader(cub, **options)


def test_expect_classes_defaults_to_200(cub: FixtureInfo) -> None:
    with pytest.raises(DataError, match=re.escape(str(cub.root / "classes.txt"))) as caught:
        create_dataset("cub", cub.root)
    assert "found 3 classes but expected 200" in str(caught.value)
    assert create_dataset("cub", cub.root, expect_classes=None).class_names == cub.class_names


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent"))):
        create_dataset("cub", tmp_path / "absent")


@pytest.mark.parametrize("name", INDEX_FILES)
def test_missing_index_file(damaged: FixtureInfo, name: str) -> None:
    (damaged.root / name).unlink()
    with pytest.raises(DataError, match=re.escape(str(damaged.root / name))) as caught:
        _reader(damaged)
    assert "expected layout" in str(caught.value)


def _set_line(path: Path, image_id: int, value: str | None) -> None:
    """Set the value of ``image_id``'s line of an index file, or drop the line (None)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.split()[0] != str(image_id):
            lines.append(line)
        elif value is not None:
            lines.append(f"{image_id} {value}")
    path.write_text("".join(f"{line}\n" for line in lines))


def test_split_file_missing_an_image(damaged: FixtureInfo) -> None:
    path = damaged.root / "train_test_split.txt"
    _set_line(path, 5, None)
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "missing 1 (5)" in str(caught.value)


def test_bad_split_flag(damaged: FixtureInfo) -> None:
    path = damaged.root / "train_test_split.txt"
    _set_line(path, 3, "2")
    with pytest.raises(DataError, match=re.escape(str(path))):
        _reader(damaged)


def test_duplicate_id(damaged: FixtureInfo) -> None:
    path = damaged.root / "images.txt"
    path.write_text(path.read_text() + "1 001.Black_footed_Albatross/again.jpg\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, line 13: id 1 appears twice")):
        _reader(damaged)


def test_class_without_images(damaged: FixtureInfo) -> None:
    path = damaged.root / "classes.txt"
    path.write_text(path.read_text() + "4 004.Groove_billed_Ani\n")
    with pytest.raises(DataError, match=re.escape(str(damaged.root / "image_class_labels.txt"))) as caught:
        _reader(damaged, expect_classes=4)
    assert "004.Groove_billed_Ani" in str(caught.value)


def test_label_not_in_classes(damaged: FixtureInfo) -> None:
    path = damaged.root / "image_class_labels.txt"
    _set_line(path, 7, "9")
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "'9'" in str(caught.value)


def test_label_disagrees_with_folder(damaged: FixtureInfo) -> None:
    _set_line(damaged.root / "image_class_labels.txt", 1, "2")
    with pytest.raises(DataError, match=re.escape(str(damaged.root / "images.txt"))) as caught:
        _reader(damaged)
    assert "001.Black_footed_Albatross" in str(caught.value) and "002.Laysan_Albatross" in str(caught.value)


def test_mask_size_mismatch(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _first(reader)
    path = _segmentation(reader, sample)
    width, height = damaged.samples[sample.id].size
    Image.new("L", (width + 1, height), 255).save(path)
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        reader.load_mask(sample)
    assert str(sample.image_path) in str(caught.value)
    assert f"{width + 1}x{height}" in str(caught.value) and f"{width}x{height}" in str(caught.value)


def test_corrupt_image(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _first(reader, "test")
    sample.image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=re.escape(str(sample.image_path))):
        reader.load_image(sample)


def test_corrupt_segmentation(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _first(reader)
    _segmentation(reader, sample).write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(str(_segmentation(reader, sample)))):
        reader.load_mask(sample)


def test_missing_segmentation(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _first(reader)
    path = _segmentation(reader, sample)
    path.unlink()
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "missing_annotation" in str(caught.value)

    reader = _reader(damaged, missing_annotation="skip")
    assert [sample_id for sample_id, _ in reader.skipped] == [sample.id]
    assert sample.id not in {s.id for split in reader.splits for s in reader.samples(split)}
    assert len(reader.samples("train")) + len(reader.samples("test")) == len(damaged.samples) - 1


def test_unknown_split(cub: FixtureInfo) -> None:
    with pytest.raises(DataError, match="'val'"):
        _reader(cub).samples("val")
