"""The folder reader (``root/<split>/<class>/<image>``) with mask images or a CSV of boxes, on planted trees."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixture_trees import FixtureInfo, assert_reader_matches
from fixture_trees_own_data import FOLDER_CLASSES, make_folder_tree
from rationality.data import create_dataset
from rationality.data.folder import FolderReader
from rationality.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    return make_folder_tree(tmp_path_factory.mktemp("folder-masks"))


@pytest.fixture(scope="module")
def boxed(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    return make_folder_tree(tmp_path_factory.mktemp("folder-boxes"), masks="boxes")


def _copy(info: FixtureInfo, tmp_path: Path) -> FixtureInfo:
    """A private copy of a tree that a test may damage."""
    shutil.copytree(info.root, tmp_path / "copy")
    return dataclasses.replace(info, root=tmp_path / "copy")


def _reader(info: FixtureInfo, **options: object) -> FolderReader:
    return create_dataset("folder", info.root, **{**info.options, **options})


def test_mask_images(masked: FixtureInfo) -> None:
    reader = _reader(masked)
    assert_reader_matches(reader, masked)
    assert reader.splits == ("test", "train") and reader.mask_splits == ("test", "train")
    assert reader.class_names == FOLDER_CLASSES == tuple(sorted(FOLDER_CLASSES))  # "Zebra" before "cat"
    assert [s.id for s in reader.samples("test")][:3] == ["test/Zebra/img0", "test/Zebra/img1", "test/Zebra/img2"]
    assert {s.image_path.suffix for s in reader.samples("test")} == {".jpg", ".png"}
    assert reader.skipped == []


def test_boxes_csv(boxed: FixtureInfo) -> None:
    """One or two boxes per image (their union), rows in shuffled order, an extra column ignored."""
    assert_reader_matches(_reader(boxed), boxed)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.7, 1.0])
def test_soft_masks_at_a_threshold(masked: FixtureInfo, threshold: float) -> None:
    reader = _reader(masked, mask_threshold=threshold)
    for sample in reader.samples("test"):
        assert int(reader.load_mask(sample).sum()) == masked.samples[sample.id].area_at_threshold[threshold]


def test_a_binary_mask_image(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    sample = _reader(info).samples("test")[0]
    width, height = info.samples[sample.id].size
    pixels = np.zeros((height, width), dtype=bool)
    pixels[2:5, 3:9] = True
    Image.fromarray(pixels).save(info.root / "masks" / "test" / "Zebra" / "img0.png")  # mode "1"
    assert int(_reader(info).load_mask(sample).sum()) == 18


def test_missing_mask(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    path = info.root / "masks" / "test" / "cat" / "img1.png"
    path.unlink()
    with pytest.raises(DataError, match=re.escape(f"{path}: mask of image {info.root / 'test/cat/img1.png'} is "
                                                  f"missing (set option missing_annotation: skip")):
        _reader(info)
    reader = _reader(info, missing_annotation="skip")
    assert [sample_id for sample_id, _ in reader.skipped] == ["test/cat/img1"]
    assert len(reader.samples("test")) == len(FOLDER_CLASSES) * 3 - 1


def test_a_split_without_masks_is_for_training(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    shutil.rmtree(info.root / "masks" / "train")
    reader = _reader(info)
    assert reader.mask_splits == ("test",) and len(reader.samples("train")) == len(FOLDER_CLASSES) * 3
    with pytest.raises(DataError, match=re.escape(str(info.root / "masks" / "train" / "Zebra" / "img0.png"))):
        reader.load_mask(reader.samples("train")[0])


def test_mask_of_another_size(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    reader = _reader(info)
    sample = reader.samples("test")[0]
    width, height = info.samples[sample.id].size
    path = info.root / "masks" / "test" / "Zebra" / "img0.png"
    Image.new("L", (width, height + 2)).save(path)
    with pytest.raises(DataError, match=re.escape(f"{path}: mask is {width}x{height + 2} but its image "
                                                  f"{sample.image_path} is {width}x{height}")):
        reader.load_mask(sample)


def test_options(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    shutil.move(info.root / "masks", info.root / "annotations")
    with pytest.raises(DataError, match="annotations/test/Zebra: folders inside a class folder are not read"):
        _reader(info)  # masks_dir unset: "annotations" looks like a split
    reader = _reader(info, masks_dir="annotations", splits=["test"])
    assert reader.splits == ("test",)
    assert_reader_matches(reader, dataclasses.replace(
        info, samples={k: v for k, v in info.samples.items() if v.split == "test"}))
    with pytest.raises(DataError, match=re.escape(f"{info.root / 'val'}: split folder does not exist")):
        _reader(info, splits=["val"])
    with pytest.raises(ConfigError, match=re.escape(f"{info.root}: splits: must be a list, got 'test'")):
        _reader(info, splits="test")
    with pytest.raises(ConfigError, match=r": mask_dir: unknown key; allowed: bounds_tolerance, boxes, mask_threshold, masks_dir, "):
        _reader(info, mask_dir="annotations")


@pytest.mark.parametrize(("damage", "error"), [
    (lambda root: shutil.copy(root / "test/cat/img0.jpg", root / "test/img0.jpg"), "image outside a class folder"),
    (lambda root: (root / "test/cat/more").mkdir(), "folders inside a class folder are not read"),
    (lambda root: shutil.copy(root / "test/cat/img0.jpg", root / "test/cat/img0.jpeg"),
     "another image of .*cat has the stem 'img0'"),
])
def test_layouts_that_are_refused(damage, error: str, masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    damage(info.root)
    with pytest.raises(DataError, match=error):
        _reader(info)


def test_other_files_are_ignored(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    (info.root / "test" / "cat" / "notes.txt").write_text("x")
    (info.root / "test" / "cat" / ".DS_Store").write_text("x")
    (info.root / ".cache").mkdir()
    (info.root / "README.md").write_text("x")
    assert_reader_matches(_reader(info), info)


def test_no_split_folders(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no split folders")):
        create_dataset("folder", tmp_path)


@pytest.mark.parametrize(("row", "error"), [
    ("test/cat/img0.jpg,1,2,x,4,", r"line \d+: xmin, ymin, xmax, ymax must be numbers"),
    ("test/cat/img0.jpg,5,2,3,4,", r"line \d+: box \[5.0, 2.0, 3.0, 4.0\] must be finite with xmin <= xmax"),
    ("test/cat/img0.jpg,1,2,inf,4,", r"line \d+: box \[1.0, 2.0, inf, 4.0\] must be finite"),
    ("test/cat/none.jpg,1,2,3,4,", r"line \d+: image 'test/cat/none.jpg' does not exist under"),
])
def test_bad_box_rows(row: str, error: str, boxed: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(boxed, tmp_path)
    path = info.root / "boxes.csv"
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}, {error}"):
        _reader(info)


def test_box_csv_columns_and_file(boxed: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(boxed, tmp_path)
    path = info.root / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: needs the columns image, xmin, ymin, xmax, ymax; xmin, "
                                                  f"ymin, xmax, ymax missing (header: image, x0, y0, x1, y1)")):
        _reader(info)
    with pytest.raises(DataError, match=re.escape(f"{info.root / 'absent.csv'}: boxes file is missing")):
        _reader(info, boxes="absent.csv")


def test_box_beyond_its_image(boxed: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(boxed, tmp_path)
    path = info.root / "boxes.csv"
    sample_id, planted = next((k, v) for k, v in info.samples.items() if v.split == "test")
    relative = f"{sample_id}.{'png' if sample_id.endswith(('1', '3')) else 'jpg'}"
    width = planted.size[0]
    path.write_text(path.read_text() + f"{relative},0,0,{width + 1},2,\n")
    reader = _reader(info)
    sample = next(s for s in reader.samples("test") if s.id == sample_id)
    assert int(reader.load_mask(sample)[:2].sum()) == 2 * width  # 1 pixel over: within the tolerance, clipped
    path.write_text(path.read_text() + f"{relative},0,0,{width + 2},2,\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: a box of {relative} spans")):
        _reader(info).load_mask(sample)
    assert int(_reader(info, bounds_tolerance=2).load_mask(sample)[:2].sum()) == 2 * width


def test_image_without_a_box(boxed: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(boxed, tmp_path)
    path = info.root / "boxes.csv"
    lines = path.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("test/dog_breed/img2.jpg,")]
    path.write_text("\n".join(kept) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: no box for image test/dog_breed/img2.jpg (set option "
                                                  "missing_annotation: skip")):
        _reader(info)
    reader = _reader(info, missing_annotation="skip")
    assert [sample_id for sample_id, _ in reader.skipped] == ["test/dog_breed/img2"]
    # a split without any box is a training split: listed whole, no masks
    path.write_text("\n".join(line for line in kept if not line.startswith("train/")) + "\n")
    reader = _reader(info, missing_annotation="skip")
    assert reader.mask_splits == ("test",) and len(reader.samples("train")) == len(FOLDER_CLASSES) * 3


def test_fingerprint_follows_the_images(masked: FixtureInfo, tmp_path: Path) -> None:
    info = _copy(masked, tmp_path)
    before = _reader(info).fingerprint("test")
    assert _reader(info).fingerprint("test") == before
    image = info.root / "test" / "cat" / "img0.jpg"
    image.write_bytes(image.read_bytes() + b"\0")
    assert _reader(info).fingerprint("test") != before
    image.unlink()
    (info.root / "masks" / "test" / "cat" / "img0.png").unlink()
    reader = _reader(info)
    assert "test/cat/img0" not in {s.id for s in reader.samples("test")}
