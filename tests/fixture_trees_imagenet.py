"""Tiny ImageNet val and ImageNet-C trees in their real on-disk formats, with planted answers.

Ten JPEG images of five synsets (two each), landscape and portrait, whose ids interleave the
classes; every image has one or two boxes of its synset (one image's two boxes overlap) and, in the
class-folder layout, a box of another synset that the reader must ignore. The synsets are chosen so
that first lemmas collide (two ``crane``, two ``maillot``), exercising the class-name rule.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rationality.data.corruptions import corrupt, sample_rng
from rationality.data.geometry import IMAGENET_C_PRE_CROP

#: LOC_synset_mapping.txt lines, in file order (not sorted, as a user's file might be).
SYNSET_LINES = (
    "n03710721 maillot, tank suit",
    "n01440764 tench, Tinca tinca",
    "n02012849 crane",
    "n03126707 crane",
    "n03710637 maillot",
)
WNIDS = tuple(sorted(line.split()[0] for line in SYNSET_LINES))
#: The reader's class names, by label (sorted wnids).
CLASS_NAMES = ("tench", "crane (n02012849)", "crane (n03126707)", "maillot (n03710637)", "maillot (tank suit)")
SIZES = ((67, 45), (45, 67), (71, 53), (53, 71))

Box = tuple[int, int, int, int]  # 1-based inclusive (xmin, ymin, xmax, ymax)


@dataclass(frozen=True)
class PlantedImage:
    """One fixture image and the answers a reader must give for it."""

    id: str
    wnid: str
    size: tuple[int, int]  # (width, height)
    boxes: tuple[Box, ...]  # of its own synset
    other: tuple[str, Box]  # a box of another synset (class-folder layout only)
    area: int  # pixels in the union of ``boxes``

    @property
    def label(self) -> int:
        return WNIDS.index(self.wnid)


def planted_images() -> list[PlantedImage]:
    """The ten planted images, in id order."""
    images = []
    for index in range(10):
        wnid = WNIDS[(3 * index) % 5]
        width, height = SIZES[index % 4]
        box = (3 + index % 3, 4, width // 2 + index, height - 5)
        boxes: tuple[Box, ...] = (box,)
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        if index % 3 == 0:  # a second, overlapping box: inclusion-exclusion gives the union's area
            second = (width // 2, height // 2, width - 2, height - 1)
            overlap = (box[2] - second[0] + 1) * (box[3] - second[1] + 1)
            boxes += (second,)
            area += (second[2] - second[0] + 1) * (second[3] - second[1] + 1) - overlap
        other = (WNIDS[(3 * index + 1) % 5], (width - 6, 1, width, 5))
        images.append(PlantedImage(f"ILSVRC2012_val_{index + 1:08d}", wnid, (width, height), boxes, other, area))
    return images


def write_imagenet_val(root: Path, layout: str = "folders", boxes: str = "xml") -> list[PlantedImage]:
    """Write the val tree into ``root`` (created if needed).

    Args:
        layout: ``folders`` (val/<wnid>/<id>.JPEG) or ``flat`` (val/<id>.JPEG).
        boxes: ``xml`` (val_annotations/<id>.xml) or ``csv`` (LOC_val_solution.csv).

    Returns:
        The planted images, in id order.
    """
    images = planted_images()
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{line}\n" for line in SYNSET_LINES), encoding="utf-8")
    rows = []
    for number, image in enumerate(images):
        folder = root / "val" / image.wnid if layout == "folders" else root / "val"
        folder.mkdir(parents=True, exist_ok=True)
        _render(image, number).save(folder / f"{image.id}.JPEG", format="JPEG", quality=95)
        objects = [(image.wnid, box) for box in image.boxes]
        if layout == "folders":
            objects.append(image.other)
        if boxes == "xml":
            (root / "val_annotations").mkdir(exist_ok=True)
            (root / "val_annotations" / f"{image.id}.xml").write_text(_voc_xml(image, objects), encoding="utf-8")
        rows.append([image.id, " ".join(f"{wnid} {' '.join(map(str, box))}" for wnid, box in objects)])
    if boxes == "csv":
        with (root / "LOC_val_solution.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows)
    return images


def write_imagenet_c(val_root: Path, root: Path, corruptions: tuple[str, ...], severities: tuple[int, ...],
                     seed: int = 0) -> None:
    """Corrupt the val images of ``val_root`` (class-folder layout) the way ImageNet-C was made:
    Resize(256) + CenterCrop(224), corrupt, save as JPEG quality 85, into
    ``root/<corruption>/<severity>/<wnid>/<id>.JPEG``. Draws come from ``sample_rng(seed, id)``."""
    for image in planted_images():
        with Image.open(val_root / "val" / image.wnid / f"{image.id}.JPEG") as clean:
            cropped = IMAGENET_C_PRE_CROP.apply_image(clean.convert("RGB"))
        for name in corruptions:
            for severity in severities:
                folder = root / name / str(severity) / image.wnid
                folder.mkdir(parents=True, exist_ok=True)
                corrupted = corrupt(cropped, name, severity, sample_rng(seed, image.id))
                corrupted.save(folder / f"{image.id}.JPEG", format="JPEG", quality=85)


def _render(image: PlantedImage, number: int) -> Image.Image:
    """Noise background with the object boxes filled in a light colour."""
    rng = np.random.default_rng(number)
    width, height = image.size
    pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    for xmin, ymin, xmax, ymax in image.boxes:  # 1-based inclusive -> 0-based inclusive
        draw.rectangle([xmin - 1, ymin - 1, xmax - 1, ymax - 1], fill=(230, 200, 60 + 30 * number % 190))
    return picture


def _voc_xml(image: PlantedImage, objects: list[tuple[str, Box]]) -> str:
    width, height = image.size
    parts = [f"<annotation><folder>val</folder><filename>{image.id}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>"]
    for wnid, (xmin, ymin, xmax, ymax) in objects:
        parts.append(f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "\n".join(parts) + "\n</annotation>\n"
