"""Tiny trees in the formats users bring their own data in: image folders and a COCO ``instances`` JSON.

Like :mod:`fixture_trees`, each ``make_*_tree`` writes images of odd sizes with objects at known pixel
positions and returns a :class:`~fixture_trees.FixtureInfo` with the exact mask area and extent every
sample must have. The COCO tree holds every kind of segmentation: polygons (one and two per
annotation), compressed and uncompressed RLE, and annotations with a box only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from fixture_trees import IMAGE_SIZES, FixtureInfo, PlantedSample, _cub_segmentation, _save_png, _write_jpeg, mask_extent

#: Class folders, in code-point order (capitals first, as ImageFolder sorts them).
FOLDER_CLASSES = ("Zebra", "cat", "dog_breed")
#: (id, name) of the COCO tree's categories, listed out of id order; classes are sorted by id.
COCO_CATEGORIES = ((7, "bicycle"), (3, "airplane"), (12, "zebra"))
#: How the COCO tree annotates image i of a class: ``COCO_KINDS[i % 5]``.
COCO_KINDS = ("polygon", "rle", "counts", "box", "two_polygons")


def make_folder_tree(root: Path, images_per_class: int = 3, masks: str = "images", seed: int = 0) -> FixtureInfo:
    """Write ``root/{train,test}/<class>/<image>`` with soft mask PNGs under ``root/masks`` or a boxes CSV.

    Images alternate JPEG and PNG. Mask images are a core of 255 in rings of 153 and 102 (so the
    default threshold 0.5 takes the core and the first ring); boxes are one or two overlapping integer
    boxes per image, written to ``boxes.csv`` (with an extra ``label`` column) in shuffled order.

    Returns:
        The tree's info; ids are ``<split>/<class>/img<k>``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    planted, rows = {}, []
    for split in ("train", "test"):
        for label, name in enumerate(FOLDER_CLASSES):
            for index in range(images_per_class):
                size = IMAGE_SIZES[(index + label + (split == "test")) % len(IMAGE_SIZES)]
                stem = f"img{index}"
                relative = f"{split}/{name}/{stem}.{'png' if index % 2 else 'jpg'}"
                if masks == "images":
                    soft, thresholds, extent = _cub_segmentation(rng, size)
                    region, area = soft > 0, thresholds[0.5]
                    _save_png(soft, root / "masks" / split / name / f"{stem}.png")
                else:
                    boxes = _boxes(rng, size, 1 + index % 2)
                    region = _paint(boxes, size)
                    area, extent = int(region.sum()), mask_extent(region)
                    rows += [[relative, *box, name] for box in boxes]
                    thresholds = {}
                _write_image(root / relative, rng, region)
                planted[f"{split}/{name}/{stem}"] = PlantedSample(label, name, split, size, area, extent, thresholds)
    options = {}
    if masks == "boxes":
        with (root / "boxes.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "xmin", "ymin", "xmax", "ymax", "label"])
            writer.writerows(rows[i] for i in rng.permutation(len(rows)))
        options = {"boxes": "boxes.csv"}
    return FixtureInfo(root, "folder", options, FOLDER_CLASSES, planted)


def make_coco_tree(root: Path, images_per_class: int = 5, seed: int = 0) -> FixtureInfo:
    """Write ``root/images/<file>`` and ``root/annotations.json`` (images, annotations, categories in
    shuffled order; image ids not contiguous) with split files ``train.txt`` and ``test.txt``.

    Image i of a class carries one annotation of kind ``COCO_KINDS[i % 5]`` (``two_polygons``: two
    disjoint rectangles as one annotation's two polygons). Half of each class (rounded down) is train.

    Returns:
        The tree's info; ids are the file stems ``<image id:06d>``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    labels = {category: label for label, (category, _) in enumerate(sorted(COCO_CATEGORIES))}
    images, annotations, planted, split_lines = [], [], {}, {"train": [], "test": []}
    for category, name in COCO_CATEGORIES:
        train = set(rng.permutation(images_per_class)[: images_per_class // 2].tolist())
        for index in range(images_per_class):
            image_id = 100 + 7 * len(images)
            size = IMAGE_SIZES[(index + labels[category]) % len(IMAGE_SIZES)]
            kind = COCO_KINDS[index % len(COCO_KINDS)]
            segmentation, bbox, region = _coco_annotation(rng, size, kind)
            file_name = f"{image_id:06d}.jpg"
            _write_jpeg(root / "images" / file_name, rng, region)
            images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": bbox,
                          "area": float(region.sum()), "iscrowd": int(kind == "rle")}
            if segmentation is not None:
                annotation["segmentation"] = segmentation
            annotations.append(annotation)
            split = "train" if index in train else "test"
            split_lines[split].append(file_name)
            planted[f"{image_id:06d}"] = PlantedSample(labels[category], name, split, size, int(region.sum()),
                                                       mask_extent(region))
    content = {"images": [images[i] for i in rng.permutation(len(images))],
               "annotations": [annotations[i] for i in rng.permutation(len(annotations))],
               "categories": [{"id": category, "name": name, "supercategory": "thing"}
                              for category, name in COCO_CATEGORIES]}
    (root / "annotations.json").write_text(json.dumps(content))
    for split, lines in split_lines.items():
        (root / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    names = tuple(name for _, name in sorted(COCO_CATEGORIES))
    options = {"annotations": "annotations.json", "images": "images",
               "split_files": {"train": "train.txt", "test": "test.txt"}}
    return FixtureInfo(root, "coco", options, names, planted)


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of bool [H, W]: run lengths in column-major order, zeros first."""
    flat = mask.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _coco_annotation(rng: np.random.Generator, size: tuple[int, int], kind: str):
    """(segmentation or None, bbox [x, y, w, h], the painted region bool [H, W]) of one annotation kind."""
    width, height = size
    x0, y0 = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
    x2, y2 = int(rng.integers(x0 + 8, width + 1)), int(rng.integers(y0 + 8, height + 1))
    x1, y1 = int(rng.integers(x0 + 2, x2 - 2)), int(rng.integers(y0 + 2, y2 - 2))
    region = np.zeros((height, width), dtype=bool)
    if kind == "polygon":  # an L whose corners lie on pixel edges (integers in COCO's frame)
        region[y0:y1, x0:x2] = True
        region[y1:y2, x0:x1] = True
        segmentation = [[x0, y0, x2, y0, x2, y1, x1, y1, x1, y2, x0, y2]]
    elif kind == "two_polygons":
        region[y0:y1, x0:x1] = True
        region[y1 + 1:y2, x1 + 1:x2] = True
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1], [x1 + 1, y1 + 1, x2, y1 + 1, x2, y2, x1 + 1, y2]]
    elif kind in ("rle", "counts"):  # an irregular blob
        yy, xx = np.mgrid[:height, :width]
        region = (xx - (x0 + x2) / 2) ** 2 / max(x2 - x0, 2) + (yy - (y0 + y2) / 2) ** 2 / max(y2 - y0, 2) < 3
        region &= rng.random(region.shape) > 0.1
        if kind == "rle":
            encoded = coco_mask.encode(np.asfortranarray(region.astype(np.uint8)))
            segmentation = {"size": [height, width], "counts": encoded["counts"].decode()}
        else:
            segmentation = {"size": [height, width], "counts": uncompressed_counts(region)}
    else:  # a box only: [x, y, w, h] covers the pixels x0..x2-1, y0..y2-1
        region[y0:y2, x0:x2] = True
        segmentation = None
    rows, columns = np.nonzero(region)
    bbox = [int(columns.min()), int(rows.min()), int(columns.max() + 1 - columns.min()),
            int(rows.max() + 1 - rows.min())]
    return segmentation, bbox, region


def _boxes(rng: np.random.Generator, size: tuple[int, int], count: int) -> list[tuple[int, int, int, int]]:
    """``count`` integer boxes (xmin, ymin, xmax, ymax) in corner coordinates; a second overlaps the first."""
    width, height = size
    xmin, ymin = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    xmax, ymax = int(rng.integers(xmin + 4, width + 1)), int(rng.integers(ymin + 4, height + 1))
    second = (xmin + 2, ymin + 2, min(xmax + 2, width), min(ymax + 2, height))
    return [(xmin, ymin, xmax, ymax), second][:count]


def _paint(boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        mask[ymin:ymax, xmin:xmax] = True
    return mask


def _write_image(path: Path, rng: np.random.Generator, region: np.ndarray) -> None:
    if path.suffix == ".jpg":
        _write_jpeg(path, rng, region)
        return
    pixels = rng.integers(0, 120, size=(*region.shape, 3), dtype=np.uint8)
    pixels[region] += np.uint8(120)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
