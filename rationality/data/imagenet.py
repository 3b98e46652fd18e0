"""ImageNet-1K (ILSVRC2012) validation set with its localisation boxes (``reader: imagenet``).

On-disk layout; both image layouts are read, detected from the image folder's contents::

    root/
      LOC_synset_mapping.txt          "<wnid> <lemma>[, <lemma>...]" per line (option class_names_file)
      val/                            the images (option images)
        n01440764/ILSVRC2012_val_00000293.JPEG   class-folder layout (valprep.sh): label = folder
        ...
      or
        ILSVRC2012_val_00000001.JPEG             flat layout (Kaggle, the original tarball):
        ...                                      label = the synset of the image's boxes
      val_annotations/ILSVRC2012_val_00000001.xml    VOC XML boxes, one file per image; or
      LOC_val_solution.csv                           header ``ImageId,PredictionString``, each string
                                                     repeating ``<wnid> <xmin> <ymin> <xmax> <ymax>``

Option ``boxes`` names the XML folder or the CSV; by default ``val_annotations/`` if it exists, else
``LOC_val_solution.csv``. Kaggle's download works with ``images: ILSVRC/Data/CLS-LOC/val`` and the
default boxes; the official box tarball unpacks its XMLs into ``val/``, which also works as
``boxes: val`` next to class folders. Relative paths in options are relative to ``root``.

* **Samples**: split ``val`` (configure ``test_split: val``); sample id = image file stem
  (``ILSVRC2012_val_00000001``), in sorted order, so both layouts give the same ids and order. Split
  ``train``, for fine-tuning only (no masks), when ``root/train/<wnid>/<id>.JPEG`` exists (option
  ``train_images``); it is listed only when asked for, as it holds 1.28 million files.
* **Labels**: index of the synset in the sorted list of the class-names file's synsets (the standard
  0..999). Option ``expect_classes`` (default 1000, null to accept any) guards against a partial list.
* **Class names**: each synset's first lemma (``n01440764 tench, Tinca tinca`` -> ``tench``). When
  first lemmas collide ignoring case (``crane`` twice, ``maillot`` twice, ``Cardigan``/``cardigan``),
  every colliding synset gets its second lemma in parentheses, or its wnid if it has none:
  ``crane (n02012849)``, ``maillot (tank suit)``. Point ``class_names_file`` at a file in the same
  format to use other names (e.g. curated prompt names).
* **Masks**: union of the boxes **of the ground-truth synset** (other synsets' boxes are ignored),
  in the pixel convention of :mod:`rationality.data._annotations` (VOC's, as Stanford Dogs, whose
  boxes come from ImageNet); a box beyond the image by more than ``bounds_tolerance`` (default 1)
  pixels is an error. An image without a box of its synset is a missing annotation
  (``missing_annotation``: ``fail`` or ``skip``).
* **Pre-crop**: option ``pre_crop: [256, 224]`` serves images and masks after ImageNet-C's
  Resize(256) + CenterCrop(224) (:class:`~rationality.data.geometry.PreCrop`), so clean images show
  the field of view of the ``imagenet_c`` reader's: that is severity 0 of an ImageNet-C curve.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rationality.data._annotations import (
    BOUNDS_TOLERANCE_OPTION, DEFAULT_BOUNDS_TOLERANCE, EXPECT_CLASSES_OPTION, box_mask, check_class_count,
    check_inside, describe_ids, image_size,
)
from rationality.data.base import (
    MISSING_ANNOTATION_OPTION, PATH_OPTION, DatasetReader, Sample, read_rgb_image, register_dataset,
)
from rationality.data.geometry import PreCrop
from rationality.errors import ConfigError, DataError

SPLIT = "val"
TRAIN_SPLIT = "train"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
WNID = re.compile(r"n\d{8}")
DEFAULT_CLASSES = 1000

_CSV_HEADER = ["ImageId", "PredictionString"]
_LAYOUT_HINT = (
    "expected val/<wnid>/<id>.JPEG or val/<id>.JPEG, boxes in val_annotations/<id>.xml or LOC_val_solution.csv, "
    "and LOC_synset_mapping.txt"
)
#: The reader's options (``ImageNetReader.option_schemas``); the imagenet_c reader takes them too.
OPTIONS: dict[str, dict[str, Any]] = {
    "images": PATH_OPTION, "boxes": PATH_OPTION, "class_names_file": PATH_OPTION, "train_images": PATH_OPTION,
    "expect_classes": EXPECT_CLASSES_OPTION, "missing_annotation": MISSING_ANNOTATION_OPTION,
    "bounds_tolerance": BOUNDS_TOLERANCE_OPTION,
    "pre_crop": {"type": ["array", "null"], "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                 "description": "[resize, crop] before the model's geometry, e.g. ImageNet-C's [256, 224]"},
}


@dataclass(frozen=True)
class Boxes:
    """The boxes of one image's ground-truth synset.

    Attributes:
        wnid: the synset.
        boxes: float [N, 4], rows (xmin, ymin, xmax, ymax), N >= 1.
        source: the annotation file they came from.
    """

    wnid: str
    boxes: np.ndarray
    source: Path


@register_dataset("imagenet")
class ImageNetReader(DatasetReader):
    """Reads the ImageNet val layouts of the module docstring.

    Args:
        root: the dataset's directory.
        **options: ``images``, ``boxes``, ``class_names_file``, ``expect_classes``,
            ``missing_annotation``, ``bounds_tolerance``, ``pre_crop`` (module docstring).

    Raises:
        ConfigError: for an unknown or invalid option.
        DataError: naming the file, if the layout is missing or inconsistent.
    """

    option_schemas = OPTIONS

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.policy = options.get("missing_annotation", "fail")
        self.tolerance = float(options.get("bounds_tolerance", DEFAULT_BOUNDS_TOLERANCE))
        try:
            self.pre_crop = PreCrop.from_option(options.get("pre_crop"), str(self.root))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        names_file = self._path(options.get("class_names_file", "LOC_synset_mapping.txt"), "class_names_file")
        synsets = read_synsets(names_file)
        check_class_count(len(synsets), options.get("expect_classes", DEFAULT_CLASSES), names_file,
                          "synsets in the class-names file")
        self.wnids = tuple(sorted(synsets))
        self._labels = {wnid: label for label, wnid in enumerate(self.wnids)}
        self._class_names = class_names(synsets)
        self._images = self._path(options.get("images", SPLIT), "images")
        self._train_images = self._path(options.get("train_images", TRAIN_SPLIT), "train_images")
        self._samples, self._boxes = self._index(self._annotation_source(options.get("boxes")))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def splits(self) -> tuple[str, ...]:
        return (SPLIT, TRAIN_SPLIT) if self._train_images.is_dir() else (SPLIT,)

    @property
    def mask_splits(self) -> tuple[str, ...]:
        return (SPLIT,)

    def samples(self, split: str) -> list[Sample]:
        if split == TRAIN_SPLIT and self._train_images.is_dir():
            images = scan_images(self._train_images, self._labels)
            if any(wnid is None for _, wnid in images.values()):
                raise DataError(f"{self._train_images}: training images must be in class folders <wnid>/<id>.JPEG")
            return [Sample(sample_id, self._labels[wnid], path) for sample_id, (path, wnid) in sorted(images.items())]
        if split != SPLIT:
            raise DataError(f"{self.root}: no split {split!r}; ImageNet has {list(self.splits)} (set test_split: "
                            f"val; train needs {self._train_images}/<wnid>/<id>.JPEG)")
        return list(self._samples)

    def load_image(self, sample: Sample) -> Image.Image:
        """The RGB image, pre-cropped if option ``pre_crop`` is set."""
        image = read_rgb_image(sample.image_path)
        return image if self.pre_crop is None else self.pre_crop.apply_image(image)

    def load_mask(self, sample: Sample) -> np.ndarray:
        """Union of the ground-truth synset's boxes: bool [H, W] of the (pre-cropped) image.

        Raises:
            DataError: naming the annotation file if a box lies outside the image.
        """
        if sample.id not in self._boxes:
            raise DataError(f"{sample.image_path}: only val images have masks (boxes); the train split is for "
                            "fine-tuning")
        annotation = self._boxes[sample.id]
        size = image_size(sample.image_path)
        boxes = annotation.boxes
        check_inside(boxes[:, [0, 2]].ravel(), boxes[:, [1, 3]].ravel(), size, self.tolerance, annotation.source,
                     f"a box of {sample.id} ({annotation.wnid})")
        mask = box_mask(boxes, size)
        return mask if self.pre_crop is None else self.pre_crop.apply_mask(mask)

    def _path(self, value: Any, option: str) -> Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{self.root}: option {option} must be a path, got {value!r}")
        return self.root / value

    def _annotation_source(self, value: Any) -> Path:
        """The boxes option, or the default XML folder, or the default CSV."""
        if value is not None:
            path = self._path(value, "boxes")
            if path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv"):
                return path
            raise DataError(f"{path}: option boxes must name a folder of VOC XML files or a .csv file "
                            "(LOC_val_solution.csv format)")
        for default in (self.root / "val_annotations", self.root / "LOC_val_solution.csv"):
            if default.exists():
                return default
        raise DataError(f"{self.root}: no boxes found: neither val_annotations/ nor LOC_val_solution.csv exists "
                        f"(or set option boxes; {_LAYOUT_HINT})")

    def _index(self, source: Path) -> tuple[list[Sample], dict[str, Boxes]]:
        """Samples in id order and their ground-truth boxes; images without any are skipped or fail."""
        images = scan_images(self._images, self._labels)
        xml_folder = source.is_dir()
        if xml_folder:
            annotations = {stem: read_voc_boxes(source / f"{stem}.xml") for stem in images
                           if (source / f"{stem}.xml").is_file()}
        else:
            annotations = read_solution_csv(source)
        samples, boxes, missing = [], {}, []
        for sample_id in sorted(images):
            path, folder_wnid = images[sample_id]
            origin = source / f"{sample_id}.xml" if xml_folder else source
            found = annotations.get(sample_id, {})
            wnid = folder_wnid if folder_wnid is not None else _only_synset(found, sample_id, origin)
            if wnid not in found:
                missing.append((sample_id, f"no box of its synset {wnid} in {origin}" if found
                                else f"no annotation in {origin}"))
                continue
            if wnid not in self._labels:
                raise DataError(f"{source}: {sample_id} is annotated with synset {wnid}, which the class-names "
                                "file does not list")
            samples.append(Sample(sample_id, self._labels[wnid], path))
            boxes[sample_id] = Boxes(wnid, np.asarray(found[wnid], dtype=np.float64), origin)
        if missing and self.policy == "fail":
            raise DataError(f"{source}: {describe_ids(i for i, _ in missing)} images have no annotation of their "
                            "synset (first: " + missing[0][1] + "); set missing_annotation: skip to leave them out")
        self.skipped.extend(missing)
        if not samples:
            raise DataError(f"{self._images}: no annotated images ({_LAYOUT_HINT})")
        return samples, boxes


def _only_synset(found: dict[str, list[list[float]]], sample_id: str, source: Path) -> str | None:
    """The single synset annotated for a flat-layout image (its label); None if there is none."""
    if len(found) > 1:
        raise DataError(f"{source}: {sample_id} has boxes of several synsets ({', '.join(sorted(found))}), so its "
                        "label is ambiguous in the flat layout; use class folders")
    return next(iter(found), None)


def scan_images(folder: Path, labels: dict[str, int]) -> dict[str, tuple[Path, str | None]]:
    """Image id -> (path, folder synset or None), in either layout (see the module docstring).

    Raises:
        DataError: for a missing folder, mixed layouts, a folder that is not a known synset, or
            an id that occurs twice.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder does not exist ({_LAYOUT_HINT})")
    entries = sorted(folder.iterdir())
    folders = [entry for entry in entries if entry.is_dir()]
    files = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    if folders and files:
        raise DataError(f"{folder}: holds both images and folders; expected either class folders "
                        f"<wnid>/<id>.JPEG or images only ({_LAYOUT_HINT})")
    if not folders:
        return {path.stem: (path, None) for path in files}
    images: dict[str, tuple[Path, str | None]] = {}
    for class_folder in folders:
        if not WNID.fullmatch(class_folder.name) or class_folder.name not in labels:
            raise DataError(f"{class_folder}: class folder is not a synset of the class-names file ({_LAYOUT_HINT})")
        for path in sorted(class_folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                if path.stem in images:
                    raise DataError(f"{path}: image id {path.stem} also occurs as {images[path.stem][0]}")
                images[path.stem] = (path, class_folder.name)
    return images


def read_synsets(path: Path) -> dict[str, list[str]]:
    """Synset -> lemmas from lines ``<wnid> <lemma>[, <lemma>...]`` (LOC_synset_mapping.txt).

    Raises:
        DataError: naming the file and line for a missing file, a malformed line or a repeated synset.
    """
    if not path.is_file():
        raise DataError(f"{path}: class-names file is missing (set option class_names_file; {_LAYOUT_HINT})")
    synsets: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        lemmas = [lemma.strip() for lemma in names.split(",") if lemma.strip()]
        if not WNID.fullmatch(wnid) or not lemmas:
            raise DataError(f"{path}, line {number}: expected '<wnid> <name>[, <name>...]', got {line!r}")
        if wnid in synsets:
            raise DataError(f"{path}, line {number}: synset {wnid} is listed twice")
        synsets[wnid] = lemmas
    if not synsets:
        raise DataError(f"{path}: class-names file lists no synsets")
    return synsets


def class_names(synsets: dict[str, list[str]]) -> tuple[str, ...]:
    """One unique name per synset, in sorted-wnid order (rule in the module docstring)."""
    first = {wnid: lemmas[0] for wnid, lemmas in synsets.items()}
    counts = Counter(name.lower() for name in first.values())
    names = {}
    for wnid, lemmas in synsets.items():
        name = first[wnid]
        if counts[name.lower()] > 1:
            name = f"{name} ({lemmas[1] if len(lemmas) > 1 else wnid})"
        names[wnid] = name
    repeated = [name for name, count in Counter(n.lower() for n in names.values()).items() if count > 1]
    return tuple(f"{names[w]} ({w})" if names[w].lower() in repeated else names[w] for w in sorted(synsets))


def read_voc_boxes(path: Path) -> dict[str, list[list[float]]]:
    """Synset -> boxes [[xmin, ymin, xmax, ymax], ...] of one VOC XML file.

    Raises:
        DataError: naming the file for unparsable XML, a missing field or an inverted box.
    """
    try:
        objects = ElementTree.parse(path).getroot().findall("object")
    except ElementTree.ParseError as exc:
        raise DataError(f"{path}: not valid XML ({exc})") from exc
    boxes: dict[str, list[list[float]]] = {}
    for number, element in enumerate(objects, start=1):
        wnid = (element.findtext("name") or "").strip()
        try:
            box = [float(element.findtext(f"bndbox/{key}") or "") for key in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            raise DataError(f"{path}: object {number} has no numeric bndbox xmin/ymin/xmax/ymax") from exc
        boxes.setdefault(_check_box(wnid, box, f"{path}: object {number}"), []).append(box)
    return boxes


def read_solution_csv(path: Path) -> dict[str, dict[str, list[list[float]]]]:
    """Image id -> synset -> boxes, from a ``LOC_val_solution.csv``-format file.

    Raises:
        DataError: naming the file and line for a bad header, a malformed prediction string, an
            inverted box or a repeated image id.
    """
    annotations: dict[str, dict[str, list[list[float]]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header != _CSV_HEADER:
            raise DataError(f"{path}: header must be {','.join(_CSV_HEADER)}, got {header!r}")
        for row in rows:
            where = f"{path}, line {rows.line_num}"
            if len(row) != 2:
                raise DataError(f"{where}: expected 2 fields (ImageId,PredictionString), got {row!r}")
            sample_id, tokens = row[0], row[1].split()
            if sample_id in annotations:
                raise DataError(f"{where}: image {sample_id} is listed twice")
            if not tokens or len(tokens) % 5:
                raise DataError(f"{where}: PredictionString must repeat '<wnid> <xmin> <ymin> <xmax> <ymax>', "
                                f"got {row[1]!r}")
            boxes: dict[str, list[list[float]]] = {}
            for start in range(0, len(tokens), 5):
                try:
                    box = [float(token) for token in tokens[start + 1 : start + 5]]
                except ValueError as exc:
                    raise DataError(f"{where}: box coordinates must be numbers, got {tokens[start:start + 5]}") from exc
                boxes.setdefault(_check_box(tokens[start], box, where), []).append(box)
            annotations[sample_id] = boxes
    return annotations


def _check_box(wnid: str, box: list[float], where: str) -> str:
    """``wnid`` after checking it is a synset id and the box is not inverted."""
    if not WNID.fullmatch(wnid):
        raise DataError(f"{where}: {wnid!r} is not a synset id (n + 8 digits)")
    if not (box[0] <= box[2] and box[1] <= box[3]):
        raise DataError(f"{where}: box {box} has xmin > xmax or ymin > ymax")
    return wnid
