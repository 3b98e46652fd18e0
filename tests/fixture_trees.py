"""Tiny dataset trees in the real on-disk formats, with known planted answers.

Each ``make_*_tree`` writes a few JPEG images per class in odd sizes of both orientations, the
dataset's own index files (text, MATLAB ``.mat``, VOC XML, PNG segmentations) in its official
layout, and returns a :class:`FixtureInfo` with what a correct reader must find: per sample id the
label, class name, split, image size and exact mask area in pixels. Objects are rectangles,
L-shaped outlines and boxes at known pixel positions, so the areas are exact integers.

Used by the reader tests, and importable by any test that needs a real-format dataset
(``from fixture_trees import make_cub_tree``; ``tests/`` is on pytest's import path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image

from rationality.data import DatasetReader

Size = tuple[int, int]  # (width, height)

#: Image sizes, cycled per image: odd sides, landscape and portrait alternating.
IMAGE_SIZES: tuple[Size, ...] = ((45, 31), (31, 43), (39, 27), (29, 41), (37, 33))

CUB_CLASS_DIRS = (
    "001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
    "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet",
)
#: Values of the CUB segmentation rings around a planted core of 255: 153 / 255 = 0.6, 102 / 255 = 0.4.
CUB_RING_VALUES = (153, 102)
#: Caltech-101 categories to draw from (three with renamed annotation folders), and the background.
CALTECH_CATEGORIES = ("Faces_easy", "airplanes", "dalmatian", "Motorbikes", "yin_yang", "car_side")
CALTECH_ANNOTATION_FOLDERS = {"Faces_easy": "Faces_3", "airplanes": "Airplanes_Side_2", "Motorbikes": "Motorbikes_16"}
DOG_FOLDERS = (
    "n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu",
    "n02085936-Maltese_dog", "n02086079-Pekinese", "n02086646-Blenheim_spaniel",
)
#: The object name of the decoy box planted in some Stanford Dogs XMLs: not the breed, so ignored.
DOG_DECOY_NAME = "person"


@dataclass(frozen=True)
class PlantedSample:
    """What a reader must report for one sample."""

    label: int
    class_name: str
    #: None where the reader computes the split itself (Caltech-101).
    split: str | None
    size: Size
    #: Object pixels of the mask under the reader's default options.
    mask_area: int
    #: Their extent (left, top, right, bottom): 0-based pixel indices, right and bottom exclusive.
    mask_box: tuple[int, int, int, int]
    #: CUB only: mask_threshold -> object pixels at that threshold.
    area_at_threshold: dict[float, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FixtureInfo:
    """A generated tree: where it is, which reader and options read it, and the planted answers."""

    root: Path
    reader: str
    #: Reader options this tree needs (e.g. ``expect_classes``, the real count being larger).
    options: dict[str, Any]
    class_names: tuple[str, ...]
    samples: dict[str, PlantedSample]

    def spec(self, name: str) -> dict[str, Any]:
        """A dataset spec ``{name, reader, root, options}`` for this tree."""
        return {"name": name, "reader": self.reader, "root": str(self.root), "options": dict(self.options)}


def make_cub_tree(
    root: Path, classes: int = 3, images_per_class: int = 4, seed: int = 0, segmentations_inside: bool = False
) -> FixtureInfo:
    """Write ``root/CUB_200_2011`` and its segmentations (at ``root/segmentations`` unless inside).

    Image ids run 1..N in class order, but ``image_class_labels.txt`` and ``train_test_split.txt``
    list them in a shuffled order, so a reader that joins by line position fails. Half of each
    class (rounded down) is train. Each segmentation is a w x h core of 255 inside a 1-pixel ring
    of 153 inside a 1-pixel ring of 102.

    Returns:
        The tree's info; ``root`` is the ``CUB_200_2011`` directory; ids are ``cub-<id:05d>``.
    """
    rng = np.random.default_rng(seed)
    dataset = Path(root) / "CUB_200_2011"
    segmentations = dataset / "segmentations" if segmentations_inside else Path(root) / "segmentations"
    class_dirs = CUB_CLASS_DIRS[:_check_count(classes, len(CUB_CLASS_DIRS))]
    images, labels, flags, planted = [], [], [], {}
    for label, class_dir in enumerate(class_dirs):
        train = set(rng.permutation(images_per_class)[: images_per_class // 2].tolist())
        for index in range(images_per_class):
            image_id = len(images) + 1
            size = IMAGE_SIZES[image_id % len(IMAGE_SIZES)]
            relative = f"{class_dir}/{class_dir[4:]}_{index + 1:04d}_{1000 + image_id}"
            segmentation, areas, extent = _cub_segmentation(rng, size)
            _write_jpeg(dataset / "images" / f"{relative}.jpg", rng, segmentation > 0)
            _save_png(segmentation, segmentations / f"{relative}.png")
            split = "train" if index in train else "test"
            images.append(f"{image_id} {relative}.jpg")
            labels.append(f"{image_id} {label + 1}")
            flags.append(f"{image_id} {int(split == 'train')}")
            name = class_dir[4:].replace("_", " ")
            planted[f"cub-{image_id:05d}"] = PlantedSample(label, name, split, size, areas[0.5], extent, areas)
    _write_lines(dataset / "images.txt", images)
    _write_lines(dataset / "classes.txt", [f"{k + 1} {name}" for k, name in enumerate(class_dirs)])
    _write_lines(dataset / "image_class_labels.txt", [labels[i] for i in rng.permutation(len(labels))])
    _write_lines(dataset / "train_test_split.txt", [flags[i] for i in rng.permutation(len(flags))])
    names = tuple(class_dir[4:].replace("_", " ") for class_dir in class_dirs)
    return FixtureInfo(dataset, "cub", {"expect_classes": classes}, names, planted)


def mark_all_train(cub_root: Path) -> None:
    """Rewrite a CUB tree's ``train_test_split.txt`` so that every image is a training image (test is empty)."""
    split_file = cub_root / "train_test_split.txt"
    split_file.write_text("".join(f"{line.split()[0]} 1\n" for line in split_file.read_text().splitlines()))


def make_caltech_tree(root: Path, classes: int = 3, images_per_class: int = 5, seed: int = 0) -> FixtureInfo:
    """Write a Caltech-101 tree: ``101_ObjectCategories`` (with ``BACKGROUND_Google``) and ``Annotations``.

    Class k (in the order of :data:`CALTECH_CATEGORIES`) has ``images_per_class + k`` images; each
    annotation is an L-shaped outline whose corners lie on pixel edges, stored as the dataset does:
    ``box_coord`` = [top, bottom, left, right] (1-based) and ``obj_contour`` relative to (left, top).
    No split is planted: the reader computes it.

    Returns:
        The tree's info; ids are ``<category>-<NNNN>``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    categories = CALTECH_CATEGORIES[:_check_count(classes, len(CALTECH_CATEGORIES))]
    labels = {category: label for label, category in enumerate(sorted(categories))}
    planted = {}
    for offset, category in enumerate(categories):
        annotation_folder = root / "Annotations" / CALTECH_ANNOTATION_FOLDERS.get(category, category)
        for number in range(1, images_per_class + offset + 1):
            size = IMAGE_SIZES[(number + offset) % len(IMAGE_SIZES)]
            xs, ys, region = _l_shape(rng, size)
            box = np.array([[ys.min() + 0.5, ys.max() - 0.5, xs.min() + 0.5, xs.max() - 0.5]])  # top bottom left right
            contour = np.stack([xs - box[0, 2], ys - box[0, 0]])
            annotation_folder.mkdir(parents=True, exist_ok=True)
            annotation = {"box_coord": box, "obj_contour": contour}
            scipy.io.savemat(annotation_folder / f"annotation_{number:04d}.mat", annotation)
            _write_jpeg(root / "101_ObjectCategories" / category / f"image_{number:04d}.jpg", rng, region)
            name = category.replace("_", " ").lower()
            area, extent = int(region.sum()), mask_extent(region)
            planted[f"{category}-{number:04d}"] = PlantedSample(labels[category], name, None, size, area, extent)
    for number in (1, 2):  # BACKGROUND_Google: images without annotations, not a class
        background = root / "101_ObjectCategories" / "BACKGROUND_Google"
        _write_jpeg(background / f"image_{number:04d}.jpg", rng, np.zeros((29, 33), dtype=bool))
    names = tuple(category.replace("_", " ").lower() for category in sorted(categories))
    return FixtureInfo(root, "caltech101", {"expect_classes": classes}, names, planted)


def make_stanford_dogs_tree(root: Path, classes: int = 3, images_per_class: int = 4, seed: int = 0) -> FixtureInfo:
    """Write a Stanford Dogs tree: ``Images``, ``Annotation`` (VOC XML, no extension) and ``lists``.

    Image i of a class has 1 + i % 2 boxes of its breed (two overlap), a decoy object named
    :data:`DOG_DECOY_NAME` when i % 3 == 2, and a box from the first to the last column when
    i % 4 == 3. Half of each class (rounded down) is train. The lists hold ``file_list``,
    ``annotation_list`` and 1-based ``labels`` as MATLAB cell arrays / doubles.

    Returns:
        The tree's info; ids are the image stems ``<wnid>_<n>``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    folders = sorted(DOG_FOLDERS[:_check_count(classes, len(DOG_FOLDERS))])
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    planted = {}
    for label, folder in enumerate(folders):
        wnid, breed = folder.split("-", 1)
        numbers = sorted(rng.choice(np.arange(1, 20000), size=images_per_class, replace=False).tolist())
        train = set(rng.permutation(images_per_class)[: images_per_class // 2].tolist())
        for index, number in enumerate(numbers):
            stem = f"{wnid}_{number}"
            size = IMAGE_SIZES[(index + label) % len(IMAGE_SIZES)]
            boxes = _dog_boxes(rng, size, count=1 + index % 2, full_width=index % 4 == 3)
            mask = _paint_boxes(boxes, size)
            objects = [(breed, box) for box in boxes]
            if index % 3 == 2:
                objects.append((DOG_DECOY_NAME, (1, 1, size[0], size[1])))
            _write_jpeg(root / "Images" / folder / f"{stem}.jpg", rng, mask)
            write_voc_xml(root / "Annotation" / folder / stem, wnid, stem, size, objects)
            split = "train" if index in train else "test"
            entries[split].append((f"{folder}/{stem}.jpg", label + 1))
            name = breed.replace("_", " ")
            planted[stem] = PlantedSample(label, name, split, size, int(mask.sum()), mask_extent(mask))
    for split, listed in entries.items():
        write_split_list(root / "lists" / f"{split}_list.mat", listed)
    write_split_list(root / "lists" / "file_list.mat", sorted(entries["train"] + entries["test"]))
    names = tuple(folder.split("-", 1)[1].replace("_", " ") for folder in folders)
    return FixtureInfo(root, "stanford_dogs", {"expect_classes": classes}, names, planted)


def assert_reader_matches(reader: DatasetReader, info: FixtureInfo) -> None:
    """Assert that ``reader`` finds exactly the planted samples, labels, class names, splits,
    image sizes, mask areas and mask extents of ``info``."""
    assert reader.class_names == info.class_names
    found = [(split, sample) for split in reader.splits for sample in reader.samples(split)]
    assert sorted(sample.id for _, sample in found) == sorted(info.samples)
    for split, sample in found:
        planted = info.samples[sample.id]
        assert (sample.label, planted.split or split) == (planted.label, split), sample.id
        assert reader.class_names[sample.label] == planted.class_name
        assert reader.load_image(sample).size == planted.size, sample.id
        mask = reader.load_mask(sample)
        assert mask.dtype == bool and mask.shape == (planted.size[1], planted.size[0]), sample.id
        assert (int(mask.sum()), mask_extent(mask)) == (planted.mask_area, planted.mask_box), sample.id


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the True pixels of bool [H, W]: 0-based, right and bottom exclusive."""
    rows, columns = np.nonzero(mask)
    return int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1


def _check_count(classes: int, available: int) -> int:
    if not 1 <= classes <= available:
        raise ValueError(f"classes must be in 1..{available}, got {classes}")
    return classes


def _cub_segmentation(
    rng: np.random.Generator, size: Size
) -> tuple[np.ndarray, dict[float, int], tuple[int, int, int, int]]:
    """A soft segmentation (uint8 [H, W]), its object area at several thresholds, and the extent of
    its object at threshold 0.5 (the core and the 153 ring)."""
    width, height = size
    w, h = int(rng.integers(4, width - 8)), int(rng.integers(4, height - 8))
    left, top = int(rng.integers(2, width - w - 1)), int(rng.integers(2, height - h - 1))
    pixels = np.zeros((height, width), dtype=np.uint8)
    for grow, value in ((2, CUB_RING_VALUES[1]), (1, CUB_RING_VALUES[0]), (0, 255)):
        pixels[top - grow: top + h + grow, left - grow: left + w + grow] = value
    core, inner, outer = w * h, (w + 2) * (h + 2), (w + 4) * (h + 4)
    # value / 255 >= threshold: 0.4 and 0.6 are exact ties with the ring values 102 and 153.
    areas = {0.3: outer, 0.4: outer, 0.5: inner, 0.6: inner, 0.7: core, 1.0: core}
    return pixels, areas, (left - 1, top - 1, left + w + 1, top + h + 1)


def _l_shape(rng: np.random.Generator, size: Size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An L-shaped outline with corners on pixel edges, in 1-based pixel coordinates.

    Returns:
        xs float [6], ys float [6] (vertices; the edge before 0-based pixel e lies at coordinate
        e + 0.5), and the pixels inside, painted directly: bool [H, W].
    """
    width, height = size
    x0, y0 = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    x2, y2 = int(rng.integers(x0 + 8, width + 1)), int(rng.integers(y0 + 8, height + 1))
    x1, y1 = int(rng.integers(x0 + 2, x2 - 2)), int(rng.integers(y0 + 2, y2 - 2))
    xs = np.array([x0, x2, x2, x1, x1, x0], dtype=np.float64) + 0.5
    ys = np.array([y0, y0, y1, y1, y2, y2], dtype=np.float64) + 0.5
    region = np.zeros((height, width), dtype=bool)
    region[y0:y1, x0:x2] = True  # the L's foot, full width
    region[y1:y2, x0:x1] = True  # its stem
    return xs, ys, region


def _dog_boxes(rng: np.random.Generator, size: Size, count: int, full_width: bool) -> list[tuple[int, int, int, int]]:
    """``count`` (1 or 2) VOC boxes (xmin, ymin, xmax, ymax), 1-based inclusive, inside the image.

    A second box is the first moved 2 pixels right and down (clipped), so the two overlap.
    """
    width, height = size
    xmin, ymin = int(rng.integers(1, width // 2)), int(rng.integers(1, height // 2))
    xmax, ymax = int(rng.integers(xmin + 4, width + 1)), int(rng.integers(ymin + 4, height + 1))
    first = (1, ymin, width, ymax) if full_width else (xmin, ymin, xmax, ymax)
    second = (first[0] + 2, first[1] + 2, min(first[2] + 2, width), min(first[3] + 2, height))
    return [first, second][:count]


def _paint_boxes(boxes: list[tuple[int, int, int, int]], size: Size) -> np.ndarray:
    """bool [H, W]: the union of 1-based inclusive boxes."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        mask[ymin - 1: ymax, xmin - 1: xmax] = True
    return mask


def _write_jpeg(path: Path, rng: np.random.Generator, region: np.ndarray) -> None:
    """A noisy RGB JPEG of ``region``'s size (bool [H, W]), brighter on the region."""
    pixels = rng.integers(0, 120, size=(*region.shape, 3), dtype=np.uint8)
    pixels[region] += np.uint8(120)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="PNG")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_voc_xml(path: Path, wnid: str, stem: str, size: Size, objects: list[tuple[str, tuple[int, ...]]]) -> None:
    """A Stanford Dogs annotation: VOC XML as the dataset writes it, without a file extension."""
    parts = [
        "<annotation>", f"\t<folder>{wnid[1:]}</folder>", f"\t<filename>{stem}</filename>",
        "\t<source>", "\t\t<database>ImageNet database</database>", "\t</source>",
        "\t<size>", f"\t\t<width>{size[0]}</width>", f"\t\t<height>{size[1]}</height>", "\t\t<depth>3</depth>",
        "\t</size>", "\t<segment>0</segment>",
    ]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts += [
            "\t<object>", f"\t\t<name>{name}</name>", "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>", f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>", f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>", "\t</object>",
        ]
    _write_lines(path, [*parts, "</annotation>"])


def write_split_list(path: Path, entries: list[tuple[str, int]]) -> None:
    """A split list .mat: file_list and annotation_list as N x 1 cell arrays, labels as N x 1 doubles."""
    files = np.empty((len(entries), 1), dtype=object)
    annotations = np.empty((len(entries), 1), dtype=object)
    for row, (entry, _) in enumerate(entries):
        files[row, 0], annotations[row, 0] = entry, entry.removesuffix(".jpg")
    labels = np.array([[float(label)] for _, label in entries], dtype=np.float64).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"file_list": files, "annotation_list": annotations, "labels": labels})
