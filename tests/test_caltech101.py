"""The Caltech-101 reader on a tiny tree in the official layout with planted answers, its split
file, and the polygon fill it relies on."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fixture_trees import FixtureInfo, assert_reader_matches, make_caltech_tree
from rationality.data import create_dataset
from rationality.data._annotations import polygon_mask
from rationality.data.caltech101 import Caltech101Reader, stratified_split
from rationality.errors import ConfigError, DataError

SPLIT_NAME = "rationality-split-seed0-train0.8.json"


@pytest.fixture(scope="module")
def caltech(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    """One tree, read once so that its split file exists; shared read-only by this module's tests."""
    info = make_caltech_tree(tmp_path_factory.mktemp("caltech"))
    _reader(info)
    return info


@pytest.fixture
def damaged(caltech: FixtureInfo, tmp_path: Path) -> FixtureInfo:
    """A private copy of the tree (with its split file) that a test may damage."""
    return dataclasses.replace(caltech, root=Path(shutil.copytree(caltech.root, tmp_path / "copy")))


def _reader(info: FixtureInfo, **options: object) -> Caltech101Reader:
    return create_dataset("caltech101", info.root, **{**info.options, **options})


def _annotation(info: FixtureInfo, folder: str, number: int = 1) -> Path:
    return info.root / "Annotations" / folder / f"annotation_{number:04d}.mat"


def test_planted_answers(caltech: FixtureInfo) -> None:
    reader = _reader(caltech)
    assert_reader_matches(reader, caltech)
    # Classes sorted by code point without BACKGROUND_Google; Faces_easy and airplanes read their
    # annotations from Faces_3 and Airplanes_Side_2.
    assert reader.class_names == ("faces easy", "airplanes", "dalmatian")
    assert reader.skipped == []


def test_split_is_stratified_and_written(caltech: FixtureInfo) -> None:
    reader = _reader(caltech)
    assert reader.split_file == caltech.root / SPLIT_NAME
    per_class = {split: Counter(sample.label for sample in reader.samples(split)) for split in reader.splits}
    # 5, 6 and 7 images: round-half-up(0.8 n) = 4, 5, 6 to train.
    assert per_class == {"train": {0: 4, 1: 5, 2: 6}, "test": {0: 1, 1: 1, 2: 1}}
    payload = json.loads(reader.split_file.read_text())
    assert (payload["seed"], payload["train_fraction"]) == (0, 0.8)
    for split in reader.splits:
        assert payload[split] == sorted(sample.id for sample in reader.samples(split))


def test_split_is_identical_across_fresh_runs(tmp_path: Path) -> None:
    runs = [make_caltech_tree(tmp_path / name) for name in ("one", "two")]
    contents = [_reader(info).split_file.read_bytes() for info in runs]
    assert contents[0] == contents[1]
    other = _reader(runs[0], split_seed=1)
    assert other.split_file == runs[0].root / "rationality-split-seed1-train0.8.json"
    assert other.split_file.read_bytes() != contents[0]


def test_stratified_split_of_a_class_ignores_other_classes() -> None:
    ids = {"a": [f"a-{k}" for k in range(10)], "b": [f"b-{k}" for k in range(7)]}
    alone = stratified_split({"a": ids["a"]}, seed=3, fraction=0.8)
    both = stratified_split(ids, seed=3, fraction=0.8)
    assert [i for i in both["train"] if i.startswith("a-")] == alone["train"]
    assert stratified_split({"b": ids["b"][::-1], "a": ids["a"]}, seed=3, fraction=0.8) == both
    assert [len(both[split]) for split in ("train", "test")] == [8 + 6, 2 + 1]
    pair = stratified_split({"c": ["c-0", "c-1"]}, seed=0, fraction=0.9)  # round(1.8) = 2, kept to 1
    assert [len(pair[split]) for split in ("train", "test")] == [1, 1]


def test_split_file_is_reused(damaged: FixtureInfo) -> None:
    path = damaged.root / SPLIT_NAME
    payload = json.loads(path.read_text())
    moved = payload["train"].pop(0)
    payload["test"].append(moved)
    path.write_text(json.dumps(payload))
    reader = _reader(damaged)
    assert moved in {sample.id for sample in reader.samples("test")}


@pytest.mark.parametrize("change", ["remove", "add"])
def test_split_file_disagrees_with_images(damaged: FixtureInfo, change: str) -> None:
    folder = damaged.root / "101_ObjectCategories" / "dalmatian"
    if change == "remove":
        (folder / "image_0002.jpg").unlink()
    else:
        shutil.copy(folder / "image_0001.jpg", folder / "image_0099.jpg")
    with pytest.raises(DataError, match=re.escape(str(damaged.root / SPLIT_NAME))) as caught:
        _reader(damaged, missing_annotation="skip")
    assert ("dalmatian-0002" if change == "remove" else "dalmatian-0099") in str(caught.value)


def test_split_file_of_another_seed(damaged: FixtureInfo) -> None:
    with pytest.raises(DataError, match="seed 0") as caught:
        _reader(damaged, split_seed=1, split_file=str(damaged.root / SPLIT_NAME))
    assert str(damaged.root / SPLIT_NAME) in str(caught.value)


def test_unwritable_root_needs_split_file(damaged: FixtureInfo, tmp_path: Path, monkeypatch) -> None:
    (damaged.root / SPLIT_NAME).unlink()

    def refuse(source: str | Path, target: str | Path) -> None:
        if Path(target).parent == damaged.root:
            raise PermissionError(13, "Permission denied", str(target))
        os.rename(source, target)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DataError, match="split_file") as caught:
        _reader(damaged)
    assert str(damaged.root / SPLIT_NAME) in str(caught.value)
    assert not [path for path in damaged.root.iterdir() if path.name.endswith(".partial")]

    split_file = tmp_path / "splits" / "caltech.json"
    reader = _reader(damaged, split_file=str(split_file))
    assert reader.split_file == split_file and split_file.is_file()
    assert json.loads(split_file.read_text())["train"] == sorted(s.id for s in reader.samples("train"))


def test_missing_annotation(damaged: FixtureInfo) -> None:
    path = _annotation(damaged, "Airplanes_Side_2", 3)
    path.unlink()
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        _reader(damaged)
    assert "missing_annotation" in str(caught.value)
    reader = _reader(damaged, missing_annotation="skip")
    assert [sample_id for sample_id, _ in reader.skipped] == ["airplanes-0003"]
    assert sum(len(reader.samples(split)) for split in reader.splits) == len(damaged.samples) - 1


def _write_annotation(path: Path, contour: np.ndarray, box: list[float]) -> None:
    scipy.io.savemat(path, {"obj_contour": contour, "box_coord": np.array([box], dtype=np.float64)})


def _sample(reader: Caltech101Reader, sample_id: str):
    return next(s for split in reader.splits for s in reader.samples(split) if s.id == sample_id)


@pytest.mark.parametrize(("overhang", "tolerance", "fails"), [(0.9, None, False), (3.0, None, True), (3.0, 4.0, False)])
def test_outline_beyond_image(damaged: FixtureInfo, overhang: float, tolerance: float | None, fails: bool) -> None:
    width = damaged.samples["dalmatian-0001"].size[0]
    # A rectangle from the image's left edge (x = 0.5) to its right edge + overhang, y = 1..6;
    # the outline is relative to the box's top-left pixel (1, 1).
    right = width + 0.5 + overhang
    contour = np.array([[-0.5, right - 1, right - 1, -0.5], [0.0, 0.0, 5.0, 5.0]])
    _write_annotation(_annotation(damaged, "dalmatian"), contour, [1, 6, 1, width])
    options = {} if tolerance is None else {"bounds_tolerance": tolerance}
    reader = _reader(damaged, **options)
    sample = _sample(reader, "dalmatian-0001")
    if fails:
        with pytest.raises(DataError, match=re.escape(str(_annotation(damaged, "dalmatian")))) as caught:
            reader.load_mask(sample)
        assert "bounds_tolerance" in str(caught.value)
    else:
        mask = reader.load_mask(sample)
        # Rows 1..5 (the top edge y = 1 is inside, the bottom edge y = 6 outside), every column.
        assert mask.sum() == 5 * width and mask[:5].all()


@pytest.mark.parametrize(("content", "message"), [
    ({"obj_contour": np.zeros((2, 5))}, "box_coord"),
    ({"obj_contour": np.zeros((3, 5)), "box_coord": np.ones((1, 4))}, "2 x K"),
    ({"obj_contour": np.zeros((2, 5)), "box_coord": np.ones((1, 3))}, "4 numbers"),
])
def test_malformed_annotation(damaged: FixtureInfo, content: dict, message: str) -> None:
    path = _annotation(damaged, "Faces_3", 2)
    scipy.io.savemat(path, content)
    reader = _reader(damaged)
    with pytest.raises(DataError, match=re.escape(str(path))) as caught:
        reader.load_mask(_sample(reader, "Faces_easy-0002"))
    assert message in str(caught.value)


def test_corrupt_annotation(damaged: FixtureInfo) -> None:
    path = _annotation(damaged, "Faces_3", 2)
    path.write_bytes(b"MATLAB 5.0 MAT-file, but then nothing")
    reader = _reader(damaged)
    with pytest.raises(DataError, match=re.escape(str(path))):
        reader.load_mask(_sample(reader, "Faces_easy-0002"))


def test_corrupt_image(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = _sample(reader, "airplanes-0001")
    sample.image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=re.escape(str(sample.image_path))):
        reader.load_image(sample)
    with pytest.raises(DataError, match=re.escape(str(sample.image_path))):
        reader.load_mask(sample)


def test_badly_named_image(damaged: FixtureInfo) -> None:
    path = damaged.root / "101_ObjectCategories" / "dalmatian" / "dog.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(str(path))):
        _reader(damaged)


@pytest.mark.parametrize("folder", ["101_ObjectCategories", "Annotations"])
def test_missing_folder(damaged: FixtureInfo, folder: str) -> None:
    shutil.rmtree(damaged.root / folder)
    with pytest.raises(DataError, match=re.escape(str(damaged.root / folder))) as caught:
        _reader(damaged)
    assert "expected layout" in str(caught.value)


def test_expect_classes_defaults_to_101(caltech: FixtureInfo) -> None:
    with pytest.raises(DataError, match="found 3 classes but expected 101"):
        create_dataset("caltech101", caltech.root)


@pytest.mark.parametrize("options", [{"split_seed": -1}, {"split_fraction": 1.0}, {"split_file": 3},
                                     {"bounds_tolerance": -1}, {"seed": 0}])
def test_invalid_options(caltech: FixtureInfo, options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        _reader(caltech, **options)


def test_unknown_split(caltech: FixtureInfo) -> None:
    with pytest.raises(DataError, match="'val'"):
        _reader(caltech).samples("val")


def test_polygon_fill_matches_pixel_centres() -> None:
    """A triangle with no centre on its boundary: the fill is exactly the centres inside."""
    xs, ys, size = np.array([2.3, 17.6, 6.2]), np.array([1.7, 8.4, 12.9]), (20, 15)
    columns, rows = np.meshgrid(np.arange(1, 21), np.arange(1, 16))
    orientation = np.sign((xs[1] - xs[0]) * (ys[2] - ys[0]) - (ys[1] - ys[0]) * (xs[2] - xs[0]))
    inside = np.ones(columns.shape, dtype=bool)
    for k in range(3):  # on the inner side of every edge
        (x0, y0), (x1, y1) = (xs[k], ys[k]), (xs[(k + 1) % 3], ys[(k + 1) % 3])
        inside &= orientation * ((x1 - x0) * (rows - y0) - (y1 - y0) * (columns - x0)) > 0
    np.testing.assert_array_equal(polygon_mask(xs, ys, size), inside)
    assert 40 < inside.sum() < 80


def test_polygon_fill_is_half_open_and_clipped() -> None:
    # A square whose edges pass through pixel centres 2 and 5: inside on the right and top edges.
    mask = polygon_mask(np.array([2.0, 5.0, 5.0, 2.0]), np.array([2.0, 2.0, 5.0, 5.0]), (6, 6))
    rows, columns = np.nonzero(mask)
    assert (set(rows + 1), set(columns + 1)) == ({2, 3, 4}, {3, 4, 5})
    # Tiling: two squares sharing an edge share no pixel and leave no gap.
    left = polygon_mask(np.array([0.0, 3.0, 3.0, 0.0]), np.array([0.0, 0.0, 7.0, 7.0]), (6, 6))
    right = polygon_mask(np.array([3.0, 9.0, 9.0, 3.0]), np.array([0.0, 0.0, 7.0, 7.0]), (6, 6))
    assert not (left & right).any() and (left | right).all()
