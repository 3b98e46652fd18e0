"""The Stanford Dogs reader on a tiny tree in the official layout with planted answers."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fixture_trees import DOG_DECOY_NAME, FixtureInfo, assert_reader_matches, make_stanford_dogs_tree, write_split_list
from rationality.data import create_dataset
from rationality.data.stanford_dogs import StanfordDogsReader
from rationality.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def dogs(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    """One tree, shared read-only by the tests of this module."""
    return make_stanford_dogs_tree(tmp_path_factory.mktemp("dogs"))


@pytest.fixture
def damaged(dogs: FixtureInfo, tmp_path: Path) -> FixtureInfo:
    """A private copy of the tree that a test may damage."""
    return dataclasses.replace(dogs, root=Path(shutil.copytree(dogs.root, tmp_path / "copy")))


def _reader(info: FixtureInfo, **options: object) -> StanfordDogsReader:
    return create_dataset("stanford_dogs", info.root, **{**info.options, **options})


def _sample(reader: StanfordDogsReader, index: int, split: str = "train"):
    return reader.samples(split)[index]


def _annotation(info: FixtureInfo, sample) -> Path:
    return info.root / "Annotation" / sample.image_path.parent.name / sample.id


def _list_entries(path: Path) -> list[tuple[str, int]]:
    content = scipy.io.loadmat(path)
    files = [str(cell[0]) for cell in content["file_list"].reshape(-1)]
    return list(zip(files, content["labels"].reshape(-1).astype(int).tolist()))


def test_planted_answers(dogs: FixtureInfo) -> None:
    reader = _reader(dogs)
    assert_reader_matches(reader, dogs)
    # Whole breed names, not truncated folder names; labels follow the sorted synset folders.
    assert reader.class_names == ("Chihuahua", "Japanese spaniel", "Shih-Tzu")
    assert [len(reader.samples(split)) for split in ("train", "test")] == [6, 6]
    assert all(re.fullmatch(r"n\d{8}_\d+", sample.id) for sample in reader.samples("test"))
    assert reader.skipped == []


def test_decoy_objects_are_ignored(dogs: FixtureInfo) -> None:
    decoys = [path for path in (dogs.root / "Annotation").rglob("*") if f"<name>{DOG_DECOY_NAME}<" in _text(path)]
    assert decoys  # the planted areas of these samples exclude the decoy box covering the image
    assert_reader_matches(_reader(dogs), dogs)


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_object_named_by_wnid(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = next(s for s in reader.samples("train") if s.label == 1)
    path = _annotation(damaged, sample)
    path.write_text(path.read_text().replace("<name>Japanese_spaniel</name>", "<name>n02085782</name>"))
    assert reader.load_mask(sample).sum() == damaged.samples[sample.id].mask_area


def test_no_object_of_the_breed(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = next(s for s in reader.samples("test") if s.label == 0)
    path = _annotation(damaged, sample)
    path.write_text(path.read_text().replace("<name>Chihuahua</name>", "<name>Pekinese</name>"))
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        reader.load_mask(sample)
    assert "Pekinese" in str(caught.value)


@pytest.mark.parametrize(("xmax_past_edge", "tolerance", "fails"), [(1, None, False), (2, None, True), (2, 2.0, False)])
def test_box_beyond_image(damaged: FixtureInfo, xmax_past_edge: int, tolerance: float | None, fails: bool) -> None:
    reader = _reader(damaged, **({} if tolerance is None else {"bounds_tolerance": tolerance}))
    sample = _sample(reader, 0)
    width, height = damaged.samples[sample.id].size
    path = _annotation(damaged, sample)
    text = re.sub(r"<xmin>\d+</xmin>", "<xmin>0</xmin>", path.read_text())
    path.write_text(re.sub(r"<xmax>\d+</xmax>", f"<xmax>{width + xmax_past_edge}</xmax>", text))
    if fails:
        with pytest.raises(DataError, match=re.escape(str(path))) as caught:
            reader.load_mask(sample)
        assert "bounds_tolerance" in str(caught.value)
    else:
        assert reader.load_mask(sample).any(axis=0).all()  # clipped to the image's columns


@pytest.mark.parametrize(("old", "new", "message"), [
    (r"<ymax>\d+</ymax>", "<ymax>0</ymax>", "inverted box"),
    (r"<xmax>\d+</xmax>", "<xmax>wide</xmax>", "needs a bndbox"),
    (r"</annotation>", "", "not XML"),
])
def test_malformed_annotation(damaged: FixtureInfo, old: str, new: str, message: str) -> None:
    reader = _reader(damaged)
    sample = _sample(reader, 1, "test")
    path = _annotation(damaged, sample)
    path.write_text(re.sub(old, new, path.read_text(), count=1))
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        reader.load_mask(sample)
    assert message in str(caught.value)


def test_label_disagrees_with_folder(damaged: FixtureInfo) -> None:
    path = damaged.root / "lists" / "test_list.mat"
    entries = _list_entries(path)
    entries[0] = (entries[0][0], entries[0][1] + 1)
    write_split_list(path, entries)
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert entries[0][0] in str(caught.value) and "label 2" in str(caught.value)


def test_entry_outside_the_breed_folders(damaged: FixtureInfo) -> None:
    path = damaged.root / "lists" / "train_list.mat"
    entries = _list_entries(path)
    entries[2] = ("n02099999-Nowhere_dog/n02099999_1.jpg", 1)
    write_split_list(path, entries)
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "n02099999-Nowhere_dog" in str(caught.value)


def test_image_listed_twice(damaged: FixtureInfo) -> None:
    train, test = (damaged.root / "lists" / f"{split}_list.mat" for split in ("train", "test"))
    write_split_list(test, _list_entries(test) + _list_entries(train)[:1])
    with pytest.raises(DataError, match="listed more than once"):
        _reader(damaged)


def test_breed_folder_in_no_list(damaged: FixtureInfo) -> None:
    (damaged.root / "Images" / "n02099601-Golden_retriever").mkdir()
    with pytest.raises(DataError, match=re.escape(str(damaged.root / "Images"))) as caught:
        _reader(damaged, expect_classes=4)
    assert "n02099601-Golden_retriever" in str(caught.value)


def test_annotation_list_disagrees(damaged: FixtureInfo) -> None:
    path = damaged.root / "lists" / "train_list.mat"
    content = scipy.io.loadmat(path)
    content["annotation_list"][0, 0] = np.array(["n02085620-Chihuahua/elsewhere"])
    scipy.io.savemat(path, {key: content[key] for key in ("file_list", "annotation_list", "labels")})
    with pytest.raises(DataError, match=re.escape(str(path))):
        _reader(damaged)


def test_missing_annotation(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _sample(reader, 2)
    _annotation(damaged, sample).unlink()
    with pytest.raises(DataError, match=re.escape(str(_annotation(damaged, sample)))) as caught:
        _reader(damaged)
    assert "missing_annotation" in str(caught.value)
    reader = _reader(damaged, missing_annotation="skip")
    assert [sample_id for sample_id, _ in reader.skipped] == [sample.id]
    assert sum(len(reader.samples(split)) for split in reader.splits) == len(damaged.samples) - 1


def test_corrupt_image(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _sample(reader, 0, "test")
    sample.image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=re.escape(str(sample.image_path))):
        reader.load_image(sample)


@pytest.mark.parametrize("name", ["train_list.mat", "test_list.mat"])
def test_missing_or_corrupt_list(damaged: FixtureInfo, name: str) -> None:
    path = damaged.root / "lists" / name
    path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataError, match=re.escape(str(path))):
        _reader(damaged)
    path.unlink()
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "expected layout" in str(caught.value)


@pytest.mark.parametrize("folder", ["Images", "Annotation"])
def test_missing_folder(damaged: FixtureInfo, folder: str) -> None:
    shutil.rmtree(damaged.root / folder)
    with pytest.raises(DataError, match=re.escape(str(damaged.root / folder))):
        _reader(damaged)


def test_expect_classes_defaults_to_120(dogs: FixtureInfo) -> None:
    with pytest.raises(DataError, match="found 3 classes but expected 120"):
        create_dataset("stanford_dogs", dogs.root)


@pytest.mark.parametrize("options", [{"bounds_tolerance": "one"}, {"expect_classes": 2.5}, {"split_seed": 0}])
def test_invalid_options(dogs: FixtureInfo, options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        _reader(dogs, **options)


def test_unknown_split(dogs: FixtureInfo) -> None:
    with pytest.raises(DataError, match="'val'"):
        _reader(dogs).samples("val")
