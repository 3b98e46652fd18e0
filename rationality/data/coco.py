"""Images with a COCO-format ``instances`` JSON (what COCO, CVAT, Label Studio, Roboflow export).

On-disk layout (``reader: coco``; relative paths in options are relative to ``root``)::

    root/
      annotations.json        {"images": [{id, file_name, width, height}],
                               "annotations": [{id, image_id, category_id, bbox, segmentation, area, iscrowd}],
                               "categories": [{id, name}]}            (option annotations)
      <file_name>             the images, under root or the folder of option images

Option ``annotations`` is one JSON file, or one per split (``{train: train.json, test: val.json}``:
each file's images are that split). With one file the splits come from ``split_files``
(``{train: train.txt, test: test.txt}``, one image ``file_name`` per line; images in no list are in
no split), or else from a seeded split stratified by class: ``train`` and ``test``, a share
``split_fraction`` (default 0.8) of each class's images to ``train``, drawn with ``split_seed``
(default 0) as the Caltech-101 reader draws its split, over the images that have a class.

Conventions:
    - Classes are the categories, sorted by id; label = position; class names are the categories'
      ``name``. With one file per split, every file must list the same categories.
    - Sample ids are the images' ``file_name`` without its extension (``000000397133``), unique in
      the dataset; each split is ordered by id.
    - An image's class (option ``label``): ``single`` (default), the one category of all its
      annotations, where an image annotated with several categories is an error or, with
      ``several_classes: skip``, left out and counted; or ``largest``, the category of its largest
      annotation (by ``area``, or the box's area where ``area`` is missing or 0; ties: the first
      annotation in the file). An image without annotations is a missing annotation
      (``missing_annotation: fail`` or ``skip``).
    - The mask is the union of every annotation of the image's class, crowd regions included:
      polygons filled (the pixels whose centres lie inside, in COCO's frame where pixel (i, j) spans
      [i, i + 1] x [j, j + 1]), RLE decoded (compressed or not; its ``size`` must be the image's), and
      an annotation without a segmentation by its ``bbox`` [x, y, width, height] (the pixels whose
      centres lie inside or on its edge). ``masks: boxes`` takes every annotation's box instead.
      Coordinates beyond the image by more than ``bounds_tolerance`` (default 1) pixels are an error,
      as is an image file whose size is not the ``width`` and ``height`` of its entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rationality.data._annotations import (
    BOUNDS_TOLERANCE_OPTION,
    DEFAULT_BOUNDS_TOLERANCE,
    ListedReader,
    box_mask,
    check_inside,
    describe_ids,
    image_size,
    polygon_mask,
    rle_counts,
    rle_mask,
    root_path,
)
from rationality.data.base import MISSING_ANNOTATION_OPTION, PATH_OPTION, Sample, register_dataset
from rationality.data.caltech101 import stratified_split
from rationality.errors import ConfigError, DataError

SEEDED_SPLITS = ("train", "test")
LABEL_RULES = ("single", "largest")
SEVERAL_CLASSES = ("fail", "skip")
MASK_SOURCES = ("segmentation", "boxes")
_PER_SPLIT: dict[str, Any] = {"type": "object", "minProperties": 1, "additionalProperties": PATH_OPTION}
#: The reader's options (``CocoReader.option_schemas``).
OPTIONS: dict[str, dict[str, Any]] = {
    "annotations": {"anyOf": [PATH_OPTION, _PER_SPLIT],
                    "description": "the instances JSON, or {split: JSON} (one file per split)"},
    "images": {"anyOf": [PATH_OPTION, _PER_SPLIT],
               "description": "where file_name is found: a folder, or {split: folder} (default root)"},
    "split_files": {**_PER_SPLIT, "description": "{split: text file of file names} splitting a single JSON"},
    "split_seed": {"type": "integer", "minimum": 0, "description": "seed of the stratified split (default 0)"},
    "split_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                       "description": "share of each class in the first split, train (default 0.8)"},
    "label": {"enum": list(LABEL_RULES), "description": "an image's class: its single category, or its largest "
                                                        "object's (default single)"},
    "several_classes": {"enum": list(SEVERAL_CLASSES), "description": "with label: single, an image of several "
                                                                      "categories fails or is skipped (default fail)"},
    "masks": {"enum": list(MASK_SOURCES), "description": "segmentations (boxes where there is none), or boxes only"},
    "missing_annotation": MISSING_ANNOTATION_OPTION,
    "bounds_tolerance": BOUNDS_TOLERANCE_OPTION,
}


@dataclass(frozen=True)
class _Image:
    """One image entry of an annotations file, and the annotations of its class."""

    source: Path
    file_name: str
    size: tuple[int, int]
    annotations: tuple[dict[str, Any], ...]


@register_dataset("coco")
class CocoReader(ListedReader):
    """Reads images and a COCO ``instances`` JSON (see the module docstring).

    Args:
        root: the dataset directory.
        **options:
            ``annotations`` (required): a JSON file, or {split: JSON file}.
            ``images`` (a folder, or {split: folder}; default ``root``): where ``file_name`` is found.
            ``split_files`` ({split: text file}), or ``split_seed`` (int >= 0, default 0) and
            ``split_fraction`` (number in (0, 1), default 0.8): the splits of a single JSON.
            ``label`` (``single`` | ``largest``, default ``single``) and ``several_classes``
            (``fail`` | ``skip``, default ``fail``): an image's class.
            ``masks`` (``segmentation`` | ``boxes``, default ``segmentation``).
            ``missing_annotation`` (``fail`` | ``skip``, default ``fail``).
            ``bounds_tolerance`` (pixels >= 0, default 1).

    Raises:
        DataError: naming the file, if an annotations or split file is missing or inconsistent.
        ConfigError: for an unknown or invalid option.
    """

    title = "COCO-format dataset"
    option_schemas = OPTIONS
    required_options = ("annotations",)

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.label_rule = options.get("label", LABEL_RULES[0])
        several = options.get("several_classes", SEVERAL_CLASSES[0])
        self.mask_source = options.get("masks", MASK_SOURCES[0])
        self.bounds_tolerance = float(options.get("bounds_tolerance", DEFAULT_BOUNDS_TOLERANCE))
        policy = options.get("missing_annotation", "fail")
        files = self._per_split(options["annotations"], "annotations")
        images = self._per_split(options.get("images", "."), "images")
        if None not in files and {"split_files", "split_seed", "split_fraction"} & set(options):
            raise ConfigError(f"{self.root}: with one annotations file per split, options split_files, split_seed "
                              f"and split_fraction do not apply")
        if None not in images and set(images) != set(files):
            raise ConfigError(f"{self.root}: option images as a mapping needs one folder per split of option "
                              f"annotations (a mapping too), got splits {sorted(images)}")

        self._class_names: tuple[str, ...] = ()
        self._entries: dict[str, _Image] = {}
        self._file_names: set[str] = set()  # of every image of the annotations, with a class or not
        listed: dict[str | None, list[Sample]] = {}
        for split, path in files.items():
            content = _read_json(path)
            names, categories = _categories(path, content)
            if self._class_names and names != self._class_names:
                raise DataError(f"{path}: its categories {list(names)} differ from those of {files[next(iter(files))]} "
                                f"({list(self._class_names)})")
            self._class_names = names
            folder = images[split] if split in images else images[None]
            listed[split] = self._samples(path, content, categories, folder, policy, several)

        if None not in listed:
            self._splits = {split: sorted(samples, key=lambda s: s.id) for split, samples in listed.items()}
        elif "split_files" in options:
            self._splits = self._from_split_files(listed[None], options["split_files"])
        else:
            seed = options.get("split_seed", 0)
            fraction = float(options.get("split_fraction", 0.8))
            by_id = {sample.id: sample for sample in listed[None]}
            ids_by_class = {name: [s.id for s in listed[None] if s.label == label]
                            for label, name in enumerate(self._class_names)}
            self._splits = {split: [by_id[i] for i in ids]
                            for split, ids in stratified_split(ids_by_class, seed, fraction).items()}

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The union of the masks of every annotation of the image's class: bool [H, W]."""
        entry = self._entries.get(sample.id)
        if entry is None:
            raise DataError(f"{self.root}: no annotation known for sample {sample.id!r}")
        found = image_size(sample.image_path)
        if found != entry.size:
            raise DataError(f"{entry.source}: image {entry.file_name!r} is {entry.size[0]}x{entry.size[1]} in the "
                            f"annotations, but {sample.image_path} is {found[0]}x{found[1]} (width x height)")
        mask = np.zeros((entry.size[1], entry.size[0]), dtype=bool)
        for annotation in entry.annotations:
            mask |= self._annotation_mask(annotation, entry)
        return mask

    # ------------------------------------------------------------------------------------- listing

    def _per_split(self, value: Any, option: str) -> dict[str | None, Path]:
        """A path option, or a {split: path} mapping, as {split or None: path under root}."""
        if isinstance(value, dict):
            return {str(split): root_path(self.root, path, f"{option}.{split}") for split, path in value.items()}
        return {None: root_path(self.root, value, option)}

    def _samples(self, path: Path, content: dict[str, Any], categories: dict[Any, int], folder: Path,
                 policy: str, several: str) -> list[Sample]:
        """The samples of one annotations file: each image with a class, the others skipped or refused."""
        images = _records(path, content, "images", ("id", "file_name", "width", "height"))
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for index, record in enumerate(images):
            if record["id"] in by_image:
                raise DataError(f"{path}: images[{index}] repeats image id {record['id']!r}")
            if not isinstance(record["file_name"], str) or not record["file_name"]:
                raise DataError(f"{path}: images[{index}] needs a file_name (text), got {record['file_name']!r}")
            if not _positive_int(record["width"]) or not _positive_int(record["height"]):
                raise DataError(f"{path}: images[{index}] ({record['file_name']!r}) needs positive integer width and "
                                f"height, got {record['width']!r} x {record['height']!r}")
            by_image[record["id"]] = []
        for index, annotation in enumerate(_records(path, content, "annotations", ("image_id", "category_id"))):
            if annotation["image_id"] not in by_image:
                raise DataError(f"{path}: annotations[{index}] refers to image id {annotation['image_id']!r}, which "
                                f"images does not list")
            if annotation["category_id"] not in categories:
                raise DataError(f"{path}: annotations[{index}] has category_id {annotation['category_id']!r}, which "
                                f"categories does not list")
            by_image[annotation["image_id"]].append({**annotation, "index": index})
        samples = []
        for record in images:
            self._file_names.add(record["file_name"])
            sample_id = str(Path(record["file_name"]).with_suffix("").as_posix())
            if sample_id in self._entries:
                raise DataError(f"{path}: two images have the id {sample_id!r} (file_name without extension): "
                                f"{self._entries[sample_id].file_name!r} ({self._entries[sample_id].source}) and "
                                f"{record['file_name']!r}")
            image_path = folder / record["file_name"]
            label = self._label(path, record, by_image[record["id"]], categories, policy, several, sample_id)
            if label is None:
                continue
            own = tuple(a for a in by_image[record["id"]] if categories[a["category_id"]] == label)
            self._entries[sample_id] = _Image(path, record["file_name"], (record["width"], record["height"]), own)
            samples.append(Sample(sample_id, label, image_path))
        return samples

    def _label(self, path: Path, record: dict[str, Any], annotations: list[dict[str, Any]],
               categories: dict[Any, int], policy: str, several: str, sample_id: str) -> int | None:
        """The image's label by the ``label`` rule, or None for an image left out (and recorded)."""
        where = f"{path}: image {record['file_name']!r} (id {record['id']!r})"
        if not annotations:
            if policy != "skip":
                raise DataError(f"{where} has no annotation (set option missing_annotation: skip to leave such images "
                                f"out)")
            self.skipped.append((sample_id, f"{path}: no annotation"))
            return None
        if self.label_rule == "largest":
            return categories[max(annotations, key=lambda a: (_area(path, a), -a["index"]))["category_id"]]
        labels = sorted({categories[a["category_id"]] for a in annotations})
        if len(labels) > 1:
            names = ", ".join(self._class_names[label] for label in labels)
            if several != "skip":
                raise DataError(f"{where} is annotated with several categories ({names}); set option label: largest "
                                f"to take its largest object's, or several_classes: skip to leave such images out")
            self.skipped.append((sample_id, f"{path}: several categories ({names})"))
            return None
        return labels[0]

    def _from_split_files(self, samples: list[Sample], option: Any) -> dict[str, list[Sample]]:
        """The splits of ``split_files`` (each line an image's ``file_name``)."""
        by_name = {self._entries[sample.id].file_name: sample for sample in samples}
        split_of: dict[str, str] = {}
        splits: dict[str, list[Sample]] = {}
        for split, value in option.items():
            path = root_path(self.root, value, f"split_files.{split}")
            if not path.is_file():
                raise DataError(f"{path}: split file of split {split!r} is missing")
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            unknown = [name for name in names if name not in self._file_names]
            if unknown:
                raise DataError(f"{path}: {describe_ids(unknown)} file names are not images of the annotations")
            for name in names:
                if name in split_of:
                    raise DataError(f"{path}: image {name!r} is also in split {split_of[name]!r}")
                split_of[name] = str(split)
            splits[str(split)] = sorted((by_name[name] for name in names if name in by_name), key=lambda s: s.id)
        return splits

    # ------------------------------------------------------------------------------------- masks

    def _annotation_mask(self, annotation: dict[str, Any], entry: _Image) -> np.ndarray:
        """One annotation's mask in its image: bool [H, W]."""
        where = f"annotations[{annotation['index']}] of image {entry.file_name!r}"
        segmentation = annotation.get("segmentation")
        if self.mask_source == "boxes" or not segmentation:
            return self._box_mask(annotation, entry, where)
        if isinstance(segmentation, dict):
            return self._rle_mask(segmentation, entry, where)
        if not isinstance(segmentation, list):
            raise DataError(f"{entry.source}: {where}: segmentation must be a list of polygons or an RLE mapping")
        mask = np.zeros((entry.size[1], entry.size[0]), dtype=bool)
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or not _numbers(polygon):
                raise DataError(f"{entry.source}: {where}: a polygon must be a flat list of at least 3 (x, y) pairs of "
                                f"numbers")
            # COCO's pixel (i, j) spans [i, i + 1]: 1-based pixel-centre coordinates are COCO's + 0.5.
            xs, ys = np.asarray(polygon[0::2], dtype=np.float64) + 0.5, np.asarray(polygon[1::2], dtype=np.float64) + 0.5
            check_inside(xs, ys, entry.size, self.bounds_tolerance, entry.source, f"a polygon of {where}")
            mask |= polygon_mask(xs, ys, entry.size)
        return mask

    def _box_mask(self, annotation: dict[str, Any], entry: _Image, where: str) -> np.ndarray:
        box = annotation.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not _numbers(box) or box[2] < 0 or box[3] < 0:
            raise DataError(f"{entry.source}: {where}: needs bbox [x, y, width, height] (numbers, width and height >= 0) "
                            f"{'with masks: boxes' if self.mask_source == 'boxes' else 'without a segmentation'}, "
                            f"got {box!r}")
        x, y, width, height = map(float, box)
        corners = np.array([[x, y, x + width, y + height]]) + 0.5  # to 1-based pixel centres
        check_inside(corners[:, [0, 2]].ravel(), corners[:, [1, 3]].ravel(), entry.size, self.bounds_tolerance,
                     entry.source, f"the bbox of {where}")
        return box_mask(corners, entry.size)

    def _rle_mask(self, segmentation: dict[str, Any], entry: _Image, where: str) -> np.ndarray:
        width, height = entry.size
        if segmentation.get("size") != [height, width]:
            raise DataError(f"{entry.source}: {where}: RLE size {segmentation.get('size')!r} is not the image's [height, width] "
                            f"[{height}, {width}]")
        counts = segmentation.get("counts")
        try:
            if isinstance(counts, str):
                counts = rle_counts(counts)
            elif not (isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)):
                raise ValueError("counts must be a string (compressed) or a list of integers")
            return rle_mask(counts, entry.size)
        except ValueError as exc:
            raise DataError(f"{entry.source}: {where}: RLE counts are invalid ({exc})") from exc


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: annotations file is missing")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: annotations file is not readable JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise DataError(f"{path}: a COCO annotations file is a JSON object with images, annotations and categories")
    return content


def _records(path: Path, content: dict[str, Any], section: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries of one section of an annotations file, each with ``keys``."""
    records = content.get(section)
    if not isinstance(records, list):
        raise DataError(f"{path}: {section} must be a list")
    for index, record in enumerate(records):
        missing = [key for key in keys if not isinstance(record, dict) or key not in record]
        if missing:
            raise DataError(f"{path}: {section}[{index}] lacks {', '.join(missing)}")
    return records


def _categories(path: Path, content: dict[str, Any]) -> tuple[tuple[str, ...], dict[Any, int]]:
    """The class names (categories sorted by id) and {category id: label}."""
    records = _records(path, content, "categories", ("id", "name"))
    ids = [record["id"] for record in records]
    names = [record["name"] for record in records]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise DataError(f"{path}: categories repeat an id or a name")
    if not records:
        raise DataError(f"{path}: categories is empty")
    ordered = sorted(records, key=lambda record: record["id"])
    return tuple(str(record["name"]) for record in ordered), {record["id"]: k for k, record in enumerate(ordered)}


def _area(path: Path, annotation: dict[str, Any]) -> float:
    """An annotation's ``area``, or its box's where the area is missing or 0 (for ``label: largest``)."""
    area = annotation.get("area")
    if _numbers([area]) and area > 0:
        return float(area)
    box = annotation.get("bbox")
    if isinstance(box, list) and len(box) == 4 and _numbers(box):
        return float(box[2]) * float(box[3])
    raise DataError(f"{path}: annotations[{annotation['index']}] has neither an area nor a bbox to compare sizes")


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
