"""The COCO-format reader on a planted tree (polygons, RLE, boxes), and its decoding against pycocotools."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from fixture_trees import FixtureInfo, assert_reader_matches
from fixture_trees_own_data import COCO_KINDS, make_coco_tree, uncompressed_counts
from rationality.data import create_dataset
from rationality.data._annotations import polygon_mask, rle_counts, rle_mask
from rationality.data.caltech101 import stratified_split
from rationality.data.coco import CocoReader
from rationality.errors import ConfigError, DataError


#: pycocotools' Cython arrays predate numpy 2's ``copy`` keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    return make_coco_tree(tmp_path_factory.mktemp("coco"))


@pytest.fixture
def damaged(coco: FixtureInfo, tmp_path: Path) -> FixtureInfo:
    """A private copy of the tree that a test may damage."""
    shutil.copytree(coco.root, tmp_path / "copy")
    return dataclasses.replace(coco, root=tmp_path / "copy")


def _reader(info: FixtureInfo, **options: Any) -> CocoReader:
    return create_dataset("coco", info.root, **{**info.options, **options})


def _edit(info: FixtureInfo, change) -> Path:
    """Apply ``change`` to the tree's annotations JSON (a dict, changed in place); returns its path."""
    path = info.root / "annotations.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    return path


def _image(content: dict, sample_id: str) -> dict:
    return next(image for image in content["images"] if image["file_name"] == f"{sample_id}.jpg")


def _annotation(content: dict, sample_id: str) -> dict:
    image_id = _image(content, sample_id)["id"]
    return next(a for a in content["annotations"] if a["image_id"] == image_id)


def test_planted_tree(coco: FixtureInfo) -> None:
    """Polygons, two polygons in one annotation, compressed and uncompressed RLE and boxes, each exact."""
    reader = _reader(coco)
    assert_reader_matches(reader, coco)
    assert reader.class_names == ("airplane", "bicycle", "zebra")  # categories 3, 7, 12, listed 7, 3, 12
    content = json.loads((coco.root / "annotations.json").read_text())
    kinds = Counter("box" if "segmentation" not in a else "rle" if isinstance(a["segmentation"], dict)
                    else "two_polygons" if len(a["segmentation"]) == 2 else "polygon" for a in content["annotations"])
    assert set(kinds) == {"box", "rle", "polygon", "two_polygons"} and len(COCO_KINDS) == 5
    assert reader.skipped == [] and [len(reader.samples(split)) for split in ("train", "test")] == [6, 9]


def test_rle_decoding_equals_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        mask = rng.random((height, width)) < rng.random()
        if trial % 10 == 0:
            mask[:] = trial % 20 == 0  # all background, all object
        encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        expected = coco_mask.decode(encoded).astype(bool)
        np.testing.assert_array_equal(rle_mask(rle_counts(encoded["counts"].decode()), (width, height)), expected)
        np.testing.assert_array_equal(rle_mask(uncompressed_counts(mask), (width, height)), expected)
    big = np.zeros((300, 500), dtype=np.uint8)
    big[40:290, 10:480] = 1  # counts above 2^10: several 5-bit groups, negative differences
    encoded = coco_mask.encode(np.asfortranarray(big))
    np.testing.assert_array_equal(rle_mask(rle_counts(encoded["counts"].decode()), (500, 300)), big.astype(bool))


def test_rle_hand_decoded() -> None:
    # [[0, 1, 1], [1, 1, 0]] column-major: 0 1 | 1 1 | 1 0 -> runs 1, 4, 1 -> "141"
    np.testing.assert_array_equal(rle_mask(rle_counts("141"), (3, 2)), [[False, True, True], [True, True, False]])
    with pytest.raises(ValueError, match="not in the encoding"):
        rle_counts("1 4")
    with pytest.raises(ValueError, match="ends inside a count"):
        rle_counts("1a")  # 'a' - 48 = 49 has the continuation bit
    with pytest.raises(ValueError, match="sum to 3 x 2 = 6 pixels, got 2 runs summing to 5"):
        rle_mask([1, 4], (3, 2))


def test_polygons_agree_with_pycocotools_but_on_the_outline() -> None:
    """pycocotools rasterises at 1/5 pixel; ours takes the pixels whose centres lie inside. They differ
    only on pixels whose centre lies within 0.2 pixels of the outline."""
    rng = np.random.default_rng(1)
    height, width = 40, 50
    differing = 0
    for _ in range(100):
        count = int(rng.integers(3, 9))
        angles, radii = np.sort(rng.random(count)) * 2 * np.pi, rng.uniform(5, 18, count)
        xs, ys = 25 + radii * np.cos(angles), 20 + radii * np.sin(angles)
        reference = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(
            [np.stack([xs, ys], 1).ravel().tolist()], height, width))).astype(bool)
        ours = polygon_mask(xs + 0.5, ys + 0.5, (width, height))
        rows, columns = np.nonzero(ours ^ reference)
        differing += len(rows)
        if len(rows):
            assert _distance_to_outline(columns + 0.5, rows + 0.5, xs, ys).max() < 0.2
    assert 0 < differing < 0.03 * 100 * np.pi * 11 ** 2  # a few percent of the pixels, on outlines


def _distance_to_outline(px: np.ndarray, py: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance [N] of points to a closed polygon's edges."""
    x1, y1 = np.roll(xs, -1), np.roll(ys, -1)
    dx, dy = x1 - xs, y1 - ys
    t = np.clip(((px[:, None] - xs) * dx + (py[:, None] - ys) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xs + t * dx - px[:, None], ys + t * dy - py[:, None]).min(axis=1)


def test_masks_from_boxes(coco: FixtureInfo) -> None:
    reader = _reader(coco, masks="boxes")
    content = json.loads((coco.root / "annotations.json").read_text())
    for sample in reader.samples("test"):
        x, y, w, h = _annotation(content, sample.id)["bbox"]
        mask = reader.load_mask(sample)
        assert int(mask.sum()) == w * h and mask[y:y + h, x:x + w].all()


def test_one_annotations_file_per_split(coco: FixtureInfo, tmp_path: Path) -> None:
    content = json.loads((coco.root / "annotations.json").read_text())
    for split in ("train", "test"):
        names = (coco.root / f"{split}.txt").read_text().split()
        images = [image for image in content["images"] if image["file_name"] in names]
        ids = {image["id"] for image in images}
        (tmp_path / split).mkdir()
        for image in images:
            shutil.copy(coco.root / "images" / image["file_name"], tmp_path / split / image["file_name"])
        (tmp_path / split / "_annotations.coco.json").write_text(json.dumps({
            **content, "images": images, "annotations": [a for a in content["annotations"] if a["image_id"] in ids]}))
    options = {"annotations": {split: f"{split}/_annotations.coco.json" for split in ("train", "test")},
               "images": {"train": "train", "test": "test"}}
    assert_reader_matches(create_dataset("coco", tmp_path, **options), dataclasses.replace(coco, root=tmp_path))
    test_file = tmp_path / "test" / "_annotations.coco.json"
    other = json.loads(test_file.read_text())
    other["categories"][0]["name"] = "bike"
    test_file.write_text(json.dumps(other))
    with pytest.raises(DataError, match=re.escape(f"{test_file}: its categories ['airplane', 'bike', 'zebra'] differ")):
        create_dataset("coco", tmp_path, **options)
    with pytest.raises(ConfigError, match="options split_files, split_seed and split_fraction do not apply"):
        create_dataset("coco", tmp_path, **options, split_seed=1)
    with pytest.raises(ConfigError, match="option images as a mapping needs one folder per split"):
        create_dataset("coco", tmp_path, annotations=options["annotations"], images={"train": "train"})


def test_seeded_split(coco: FixtureInfo) -> None:
    options = {"annotations": "annotations.json", "images": "images"}
    reader = create_dataset("coco", coco.root, **options, split_seed=3, split_fraction=0.6)
    assert reader.splits == ("train", "test")
    by_class = {name: sorted(i for i, p in coco.samples.items() if p.class_name == name) for name in coco.class_names}
    expected = stratified_split(by_class, seed=3, fraction=0.6)
    assert {split: [s.id for s in reader.samples(split)] for split in reader.splits} == expected
    assert [len(expected["train"]), len(expected["test"])] == [9, 6]  # 3 of each class's 5
    again = create_dataset("coco", coco.root, **options, split_seed=3, split_fraction=0.6)
    assert again.samples("test") == reader.samples("test")
    other = create_dataset("coco", coco.root, **options, split_seed=4, split_fraction=0.6)
    assert [s.id for s in other.samples("test")] != expected["test"]


def test_split_files(damaged: FixtureInfo) -> None:
    train = damaged.root / "train.txt"
    train.write_text(train.read_text() + "nowhere.jpg\n")
    with pytest.raises(DataError, match=re.escape(f"{train}: 1 (nowhere.jpg) file names are not images of the")):
        _reader(damaged)
    first_test = (damaged.root / "test.txt").read_text().split()[0]
    train.write_text(first_test + "\n")
    with pytest.raises(DataError, match=re.escape(f"{damaged.root / 'test.txt'}: image {first_test!r} is also in "
                                                  f"split 'train'")):
        _reader(damaged)
    with pytest.raises(DataError, match=re.escape(f"{damaged.root / 'val.txt'}: split file of split 'val' is missing")):
        _reader(damaged, split_files={"val": "val.txt"})


def _second_category(coco: FixtureInfo, sample_id: str, area: float) -> Path:
    """Give an image an extra box annotation of another category (zebra, id 12) of the given area."""

    def change(content: dict) -> None:
        image = _image(content, sample_id)
        content["annotations"].append({"id": 999, "image_id": image["id"], "category_id": 12, "bbox": [0, 0, 2, 3],
                                       "area": area, "iscrowd": 0})

    return _edit(coco, change)


def test_images_with_several_classes(damaged: FixtureInfo) -> None:
    sample_id = next(i for i, p in damaged.samples.items() if p.class_name == "airplane" and p.split == "test")
    path = _second_category(damaged, sample_id, area=6.0)
    with pytest.raises(DataError, match=re.escape(f"{path}: image '{sample_id}.jpg'") + r" \(id \d+\) is annotated with "
                       r"several categories \(airplane, zebra\); set option label: largest"):
        _reader(damaged)
    skipping = _reader(damaged, several_classes="skip")
    assert [sample for sample, _ in skipping.skipped] == [sample_id]
    assert sample_id not in {s.id for s in skipping.samples("test")}
    largest = _reader(damaged, label="largest")  # the planted object is larger than the 6-pixel box
    assert_reader_matches(largest, damaged)  # the label, and a mask without the other category's box
    _second_category(damaged, sample_id, area=1e6)
    relabelled = _reader(damaged, label="largest")
    sample = next(s for s in relabelled.samples("test") if s.id == sample_id)
    # the two zebra boxes (2 x 3 pixels, in the same place) make the mask; the airplane is left out
    assert relabelled.class_names[sample.label] == "zebra" and int(relabelled.load_mask(sample).sum()) == 2 * 3


def test_image_without_annotations(damaged: FixtureInfo) -> None:
    sample_id = next(i for i, p in damaged.samples.items() if p.split == "train")
    path = _edit(damaged, lambda c: c["annotations"].remove(_annotation(c, sample_id)))
    with pytest.raises(DataError, match=re.escape(f"{path}: image '{sample_id}.jpg'") + r" \(id \d+\) has no "
                       "annotation \\(set option missing_annotation: skip"):
        _reader(damaged)
    reader = _reader(damaged, missing_annotation="skip")
    assert [s for s, _ in reader.skipped] == [sample_id] and sample_id not in {s.id for s in reader.samples("train")}


@pytest.mark.parametrize(("change", "error"), [
    (lambda c: c["annotations"][0].update(category_id=5), r"annotations\[0\] has category_id 5, which categories"),
    (lambda c: c["annotations"][0].update(image_id=-1), r"annotations\[0\] refers to image id -1, which images"),
    (lambda c: c["images"].append(dict(c["images"][0])), r"images\[15\] repeats image id"),
    (lambda c: c["images"].append({**c["images"][0], "id": 1, "file_name": c["images"][0]["file_name"][:-3] + "png"}),
     "two images have the id"),
    (lambda c: c["images"][0].update(width=0), r"images\[0\] \(.*\) needs positive integer width and height"),
    (lambda c: c["images"][0].pop("file_name"), r"images\[0\] lacks file_name"),
    (lambda c: c["images"][0].update(file_name=7), r"images\[0\] needs a file_name \(text\), got 7"),
    (lambda c: c["categories"].append({"id": 40, "name": "zebra"}), "categories repeat an id or a name"),
    (lambda c: c.pop("annotations"), "annotations must be a list"),
])
def test_inconsistent_annotations(change, error: str, damaged: FixtureInfo) -> None:
    path = _edit(damaged, change)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {error}"):
        _reader(damaged)


def _test_sample(info: FixtureInfo, kind: str) -> str:
    """A test sample whose annotation is of ``kind`` (see COCO_KINDS)."""
    content = json.loads((info.root / "annotations.json").read_text())
    for sample_id, planted in info.samples.items():
        segmentation = _annotation(content, sample_id).get("segmentation")
        found = ("box" if segmentation is None else "counts" if isinstance(segmentation, dict) and isinstance(
            segmentation["counts"], list) else "rle" if isinstance(segmentation, dict) else "polygon")
        if found == kind:
            return sample_id
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "change", "error"), [
    ("rle", lambda a: a["segmentation"].update(size=[1, 1]), r"RLE size \[1, 1\] is not the image's \[height, width\]"),
    ("counts", lambda a: a["segmentation"]["counts"].append(3), r"RLE counts are invalid \(run lengths must be >= 0 and sum"),
    ("rle", lambda a: a["segmentation"].update(counts="~~"), "RLE counts are invalid"),
    ("polygon", lambda a: a["segmentation"][0].extend([500, 1]), r"a polygon of annotations\[\d+\] of image .* spans"),
    ("polygon", lambda a: a["segmentation"][0].pop(), "a polygon must be a flat list of at least 3"),
    ("box", lambda a: a.update(bbox=[1, 2, 3]), r"needs bbox \[x, y, width, height\] .* without a segmentation"),
    ("box", lambda a: a.update(bbox=[1, 2, 300, 3]), r"the bbox of annotations\[\d+\] of image .* spans"),
])
def test_annotations_that_do_not_fit_their_image(kind: str, change, error: str, damaged: FixtureInfo) -> None:
    sample_id = _test_sample(damaged, kind)
    path = _edit(damaged, lambda c: change(_annotation(c, sample_id)))
    reader = _reader(damaged)
    sample = next(s for split in reader.splits for s in reader.samples(split) if s.id == sample_id)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: .*{error}"):
        reader.load_mask(sample)


def test_image_of_another_size_than_its_entry(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    sample = reader.samples("test")[0]
    width, height = damaged.samples[sample.id].size
    Image.new("RGB", (width + 1, height)).save(sample.image_path, format="JPEG")
    with pytest.raises(DataError, match=re.escape(f"{damaged.root / 'annotations.json'}: image '{sample.id}.jpg' is "
                                                  f"{width}x{height} in the annotations, but {sample.image_path} is "
                                                  f"{width + 1}x{height}")):
        reader.load_mask(sample)


def test_options_and_files(damaged: FixtureInfo) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{damaged.root}: annotations: missing (required)")):
        create_dataset("coco", damaged.root)
    with pytest.raises(ConfigError, match=re.escape(f"{damaged.root}: label: 'first' is not allowed; allowed: "
                                                    f"single, largest")):
        _reader(damaged, label="first")
    with pytest.raises(DataError, match=re.escape(f"{damaged.root / 'none.json'}: annotations file is missing")):
        _reader(damaged, annotations="none.json")
    (damaged.root / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="annotations.json: annotations file is not readable JSON"):
        _reader(damaged)


def test_fingerprint_follows_the_images(damaged: FixtureInfo) -> None:
    reader = _reader(damaged)
    before = reader.fingerprint("test")
    sample = reader.samples("test")[0]
    sample.image_path.write_bytes(sample.image_path.read_bytes() + b"\0")
    assert _reader(damaged).fingerprint("test") != before
    sample.image_path.unlink()
    with pytest.raises(DataError, match=re.escape(f"{sample.image_path}: image file is missing")):
        _reader(damaged).fingerprint("test")
