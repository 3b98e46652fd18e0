"""ImageNet val and ImageNet-C readers on fixture trees in the real formats, against planted answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rationality.data import create_dataset
from rationality.data.geometry import IMAGENET_C_PRE_CROP
from rationality.data.imagenet import class_names
from rationality.errors import ConfigError, DataError
from tests.fixture_trees_imagenet import CLASS_NAMES, WNIDS, planted_images, write_imagenet_c, write_imagenet_val

SMALL = {"expect_classes": 5}
CORRUPTIONS = ("gaussian_noise", "fog", "speckle_noise")  # one of the extra corruptions too
SEVERITIES = (1, 4)


@pytest.fixture(scope="module")
def val_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-folder layout with XML boxes (read-only: copy it to change it)."""
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet_val(root)
    return root


@pytest.fixture(scope="module")
def imagenet_c_root(tmp_path_factory: pytest.TempPathFactory, val_root: Path) -> Path:
    root = tmp_path_factory.mktemp("imagenet-c")
    write_imagenet_c(val_root, root, CORRUPTIONS, SEVERITIES)
    return root


@pytest.fixture
def val_copy(tmp_path: Path, val_root: Path) -> Path:
    return Path(shutil.copytree(val_root, tmp_path / "imagenet"))


def _imagenet_c(root: Path, val: Path, **options):
    return create_dataset("imagenet_c", root, corruption="fog", severity=4, val_root=str(val), **SMALL, **options)


@pytest.mark.parametrize("layout", ["folders", "flat"])
@pytest.mark.parametrize("boxes", ["xml", "csv"])
def test_reader_gives_planted_ids_labels_names_and_masks(tmp_path: Path, layout: str, boxes: str) -> None:
    planted = write_imagenet_val(tmp_path, layout, boxes)
    reader = create_dataset("imagenet", tmp_path, **SMALL)
    assert reader.splits == ("val",)
    assert reader.class_names == CLASS_NAMES
    samples = reader.samples("val")
    assert [s.id for s in samples] == [p.id for p in planted]
    assert [s.label for s in samples] == [p.label for p in planted]
    for sample, truth in zip(samples, planted):
        mask = reader.load_mask(sample)
        assert mask.shape == (truth.size[1], truth.size[0])
        assert mask.sum() == truth.area  # the other synset's box is not in it
        xmin, ymin, xmax, ymax = truth.boxes[0]
        assert mask[ymin - 1, xmin - 1] and mask[ymax - 1, xmax - 1] and not mask[0, 0]
        assert reader.load_image(sample).size == truth.size
    assert reader.skipped == []


def test_pre_crop_serves_imagenet_c_frame(val_root: Path) -> None:
    plain = create_dataset("imagenet", val_root, **SMALL)
    cropped = create_dataset("imagenet", val_root, **SMALL, pre_crop=[256, 224])
    for sample in cropped.samples("val")[:3]:
        mask = cropped.load_mask(sample)
        assert mask.shape == (224, 224) and cropped.load_image(sample).size == (224, 224)
        assert np.array_equal(mask, IMAGENET_C_PRE_CROP.apply_mask(plain.load_mask(sample)))


def test_layout_paths_are_options(tmp_path: Path) -> None:
    """Kaggle's folders (flat images, XMLs elsewhere), and the official box tarball's XMLs in val/."""
    planted = write_imagenet_val(tmp_path / "kaggle", "flat", "xml")
    images, xmls = (tmp_path / "kaggle" / "ILSVRC" / part / "CLS-LOC" for part in ("Data", "Annotations"))
    images.mkdir(parents=True)
    xmls.mkdir(parents=True)
    (tmp_path / "kaggle" / "val").rename(images / "val")
    (tmp_path / "kaggle" / "val_annotations").rename(xmls / "val")
    kaggle = create_dataset("imagenet", tmp_path / "kaggle", **SMALL, images="ILSVRC/Data/CLS-LOC/val",
                            boxes="ILSVRC/Annotations/CLS-LOC/val")
    assert [(s.id, s.label) for s in kaggle.samples("val")] == [(p.id, p.label) for p in planted]

    write_imagenet_val(tmp_path / "official")
    for xml in (tmp_path / "official" / "val_annotations").iterdir():
        xml.rename(tmp_path / "official" / "val" / xml.name)
    official = create_dataset("imagenet", tmp_path / "official", **SMALL, boxes="val")
    assert [reader_mask.sum() for reader_mask in map(official.load_mask, official.samples("val"))] == [
        p.area for p in planted]


def test_corrupted_reader_pre_crop_equals_base_pre_crop(val_root: Path) -> None:
    outer = create_dataset("corrupted", val_root, corruption="zoom_blur", severity=2, pre_crop=[256, 224],
                           base={"reader": "imagenet", "options": SMALL})
    inner = create_dataset("corrupted", val_root, corruption="zoom_blur", severity=2,
                           base={"reader": "imagenet", "options": {**SMALL, "pre_crop": [256, 224]}})
    sample = inner.samples("val")[1]
    assert np.array_equal(outer.load_mask(sample), inner.load_mask(sample))
    assert outer.load_image(sample).tobytes() == inner.load_image(sample).tobytes()


def test_class_name_rule_disambiguates_collisions() -> None:
    synsets = {"n02963159": ["cardigan"], "n02113186": ["Cardigan", "Cardigan Welsh corgi"],
               "n01440764": ["tench", "Tinca tinca"], "n02012849": ["crane"], "n03126707": ["crane"]}
    assert class_names(synsets) == ("tench", "crane (n02012849)", "Cardigan (Cardigan Welsh corgi)",
                                    "cardigan (n02963159)", "crane (n03126707)")


def _replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_box_outside_image_is_an_error_beyond_one_pixel(val_copy: Path) -> None:
    first = planted_images()[0]
    xml = val_copy / "val_annotations" / f"{first.id}.xml"
    xmax = f"<xmax>{first.boxes[0][2]}</xmax>"
    _replace_in(xml, xmax, f"<xmax>{first.size[0] + 1}</xmax>")  # 1 px over: tolerated, clipped
    reader = create_dataset("imagenet", val_copy, **SMALL)
    assert reader.load_mask(reader.samples("val")[0])[5].sum() == first.size[0] - first.boxes[0][0] + 1
    _replace_in(xml, f"<xmax>{first.size[0] + 1}</xmax>", f"<xmax>{first.size[0] + 3}</xmax>")
    reader = create_dataset("imagenet", val_copy, **SMALL)
    with pytest.raises(DataError, match=rf"{first.id}\.xml.*beyond its 67x45 image"):
        reader.load_mask(reader.samples("val")[0])


def test_missing_annotation_fails_or_skips(val_copy: Path) -> None:
    second, third = planted_images()[1:3]
    (val_copy / "val_annotations" / f"{second.id}.xml").unlink()
    xml = val_copy / "val_annotations" / f"{third.id}.xml"  # only another synset's box left
    xml.write_text(xml.read_text().replace(f"<name>{third.wnid}</name>", f"<name>{third.other[0]}</name>"))
    with pytest.raises(DataError, match=rf"2 \({second.id}, {third.id}\) images have no annotation"):
        create_dataset("imagenet", val_copy, **SMALL)
    reader = create_dataset("imagenet", val_copy, **SMALL, missing_annotation="skip")
    assert [i for i, _ in reader.skipped] == [second.id, third.id]
    assert f"no box of its synset {third.wnid}" in reader.skipped[1][1]
    assert [s.id for s in reader.samples("val")] == [p.id for p in planted_images() if p not in (second, third)]


def test_class_count_and_layout_errors(val_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found 5 classes but expected 1000"):
        create_dataset("imagenet", val_copy)
    with pytest.raises(DataError, match="class-names file is missing"):
        create_dataset("imagenet", val_copy, **SMALL, class_names_file="synsets.txt")
    with pytest.raises(DataError, match=r"image folder does not exist \(expected val/<wnid>"):
        create_dataset("imagenet", val_copy, **SMALL, images="ILSVRC/Data/CLS-LOC/val")
    with pytest.raises(DataError, match="no split 'test'.*set test_split: val"):
        create_dataset("imagenet", val_copy, **SMALL).samples("test")
    with pytest.raises(ConfigError, match="box: unknown key; allowed: bounds_tolerance, boxes"):
        create_dataset("imagenet", val_copy, **SMALL, box="x")
    with pytest.raises(ConfigError, match="pre_crop: must be a list or null, got 256"):
        create_dataset("imagenet", val_copy, **SMALL, pre_crop=256)
    (val_copy / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999: class folder is not a synset"):
        create_dataset("imagenet", val_copy, **SMALL)
    shutil.rmtree(val_copy / "val_annotations")
    with pytest.raises(DataError, match="no boxes found"):
        create_dataset("imagenet", val_copy, **SMALL)


def test_flat_layout_rejects_boxes_of_several_synsets(tmp_path: Path) -> None:
    first = write_imagenet_val(tmp_path, "flat", "csv")[0]
    csv_path = tmp_path / "LOC_val_solution.csv"
    _replace_in(csv_path, f"{first.id},", f"{first.id},{first.other[0]} 1 1 2 2 ")
    with pytest.raises(DataError, match=f"LOC_val_solution.csv: {first.id} has boxes of several synsets"):
        create_dataset("imagenet", tmp_path, **SMALL)
    _replace_in(csv_path, f"{first.id},{first.other[0]} 1 1 2 2 ", f"{first.id},{first.wnid} 1 1 2 ")
    with pytest.raises(DataError, match=r"LOC_val_solution.csv, line 2: PredictionString must repeat"):
        create_dataset("imagenet", tmp_path, **SMALL)


# --- ImageNet-C ---

def test_imagenet_c_reuses_val_ids_labels_and_pre_cropped_masks(val_root: Path, imagenet_c_root: Path) -> None:
    val = create_dataset("imagenet", val_root, **SMALL)
    reader = _imagenet_c(imagenet_c_root, val_root)
    assert reader.class_names == CLASS_NAMES and reader.splits == ("val",)
    samples = reader.samples("val")
    assert [(s.id, s.label) for s in samples] == [(s.id, s.label) for s in val.samples("val")]
    for sample, clean in zip(samples, val.samples("val")):
        assert sample.image_path == imagenet_c_root / "fog" / "4" / WNIDS[sample.label] / f"{sample.id}.JPEG"
        assert np.array_equal(reader.load_mask(sample), IMAGENET_C_PRE_CROP.apply_mask(val.load_mask(clean)))
        assert reader.load_image(sample).size == (224, 224)


def test_imagenet_c_from_disk_matches_on_the_fly_corruption(val_root: Path, imagenet_c_root: Path) -> None:
    """The same val image and severity, from ImageNet-C files and from the corrupted reader."""
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            disk = create_dataset("imagenet_c", imagenet_c_root, corruption=corruption, severity=severity,
                                  val_root=str(val_root), **SMALL)
            fly = create_dataset("corrupted", val_root, corruption=corruption, severity=severity, pre_crop=[256, 224],
                                 base={"reader": "imagenet", "options": SMALL})
            disk_samples, fly_samples = disk.samples("val"), fly.samples("val")
            assert [(s.id, s.label) for s in disk_samples] == [(s.id, s.label) for s in fly_samples]
            for on_disk, on_the_fly in zip(disk_samples, fly_samples):
                assert np.array_equal(disk.load_mask(on_disk), fly.load_mask(on_the_fly))
                # The files are the on-the-fly images saved as JPEG (quality 85, as ImageNet-C): the
                # corrupted reader's default JPEG step gives the same pixels.
                assert np.array_equal(np.asarray(disk.load_image(on_disk)), np.asarray(fly.load_image(on_the_fly)))


def test_imagenet_c_errors(val_root: Path, imagenet_c_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such corruption folder.*present: fog, gaussian_noise"):
        create_dataset("imagenet_c", imagenet_c_root, corruption="snow", severity=1, val_root=str(val_root), **SMALL)
    with pytest.raises(DataError, match="no such severity folder; severities present: 1, 4"):
        create_dataset("imagenet_c", imagenet_c_root, corruption="fog", severity=2, val_root=str(val_root), **SMALL)
    with pytest.raises(ConfigError, match="severity must be an integer in 1..5"):
        create_dataset("imagenet_c", imagenet_c_root, corruption="fog", severity=0, val_root=str(val_root), **SMALL)
    with pytest.raises(ConfigError, match="val_root: missing"):
        create_dataset("imagenet_c", imagenet_c_root, corruption="fog", severity=1, **SMALL)
    with pytest.raises(ConfigError, match="pre_crop: unknown key"):
        _imagenet_c(imagenet_c_root, val_root, pre_crop=[256, 224])

    root = Path(shutil.copytree(imagenet_c_root, tmp_path / "c"))
    first, second = planted_images()[:2]
    folder = root / "fog" / "4"
    stray = folder / first.wnid / "ILSVRC2012_val_00000099.JPEG"
    shutil.copy(folder / first.wnid / f"{first.id}.JPEG", stray)
    with pytest.raises(DataError, match="1 \\(ILSVRC2012_val_00000099\\) corrupted images have no ImageNet val"):
        _imagenet_c(root, val_root)
    stray.unlink()
    moved = folder / second.other[0] / f"{second.id}.JPEG"
    moved.parent.mkdir(exist_ok=True)
    (folder / second.wnid / f"{second.id}.JPEG").rename(moved)
    with pytest.raises(DataError, match=f"{second.id}.JPEG: filed under synset {second.other[0]}"):
        _imagenet_c(root, val_root)
    moved.unlink()
    with pytest.raises(DataError, match=f"1 \\({second.id}\\) val images have no corrupted counterpart"):
        _imagenet_c(root, val_root)
    Image.new("RGB", (200, 200)).save(folder / second.wnid / f"{second.id}.JPEG")
    reader = _imagenet_c(root, val_root)
    with pytest.raises(DataError, match=f"{second.id}.JPEG: image is 200x200, but ImageNet-C images are 224x224"):
        reader.load_mask(reader.samples("val")[1])


def test_imagenet_c_skips_what_the_val_reader_skips(val_copy: Path, imagenet_c_root: Path) -> None:
    second = planted_images()[1]
    (val_copy / "val_annotations" / f"{second.id}.xml").unlink()
    reader = _imagenet_c(imagenet_c_root, val_copy, missing_annotation="skip")
    assert [i for i, _ in reader.skipped] == [second.id]
    assert second.id not in [s.id for s in reader.samples("val")]


def test_train_split_for_fine_tuning_has_labels_and_no_masks(tmp_path: Path) -> None:
    write_imagenet_val(tmp_path)
    assert create_dataset("imagenet", tmp_path, **SMALL).splits == ("val",)
    for wnid, count in ((WNIDS[1], 2), (WNIDS[0], 3)):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20, 30)).save(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG")
    reader = create_dataset("imagenet", tmp_path, **SMALL)
    assert reader.splits == ("val", "train") and reader.mask_splits == ("val",)
    train = reader.samples("train")
    assert [(s.id, s.label) for s in train] == [(f"{WNIDS[0]}_{i}", 0) for i in range(3)] + [
        (f"{WNIDS[1]}_{i}", 1) for i in range(2)]
    with pytest.raises(DataError, match="only val images have masks"):
        reader.load_mask(train[0])
    Image.new("RGB", (20, 30)).save(tmp_path / "train" / "loose.JPEG")
    with pytest.raises(DataError, match="holds both images and folders"):
        reader.samples("train")
