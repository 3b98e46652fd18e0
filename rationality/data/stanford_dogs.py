"""Stanford Dogs: the official train/test lists, breed names, and masks from the dogs' boxes.

On-disk layout (``root`` holds the unpacked ``images.tar``, ``annotation.tar`` and ``lists.tar``)::

    root/
      Images/<wnid>-<Breed>/<wnid>_<n>.jpg       e.g. Images/n02085620-Chihuahua/n02085620_10074.jpg
      Annotation/<wnid>-<Breed>/<wnid>_<n>       Pascal VOC XML, no file extension
      lists/train_list.mat, lists/test_list.mat  file_list ("<wnid>-<Breed>/<file>.jpg"),
                                                 annotation_list (the same without .jpg),
                                                 labels (1-based class numbers)

Splits: ``train`` (12,000 images in the real set) and ``test`` (8,580), in list order.

Conventions:
    - Classes are the folders of ``Images/`` sorted by name (the synset order of the lists);
      label = ``labels - 1``, which must equal the folder's position. Class names are the whole
      breed part of the folder, underscores as spaces: ``n02085782-Japanese_spaniel`` ->
      ``Japanese spaniel``, ``n02086240-Shih-Tzu`` -> ``Shih-Tzu``.
    - Sample ids are the image file stems (``n02085620_10074``), unique across the dataset.
    - The mask is the union of the boxes of **every** object of the image's breed: its ``<name>``
      is the breed as in the folder name (``Japanese_spaniel``; compared ignoring case and
      ``_``/space) or the wnid; objects of other names are ignored. Boxes are VOC's 1-based
      inclusive pixel indices: ``xmin..xmax`` x ``ymin..ymax``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from rationality.data._annotations import (
    BOUNDS_TOLERANCE_OPTION,
    DEFAULT_BOUNDS_TOLERANCE,
    EXPECT_CLASSES_OPTION,
    ListedReader,
    box_mask,
    check_class_count,
    check_inside,
    describe_ids,
    image_size,
    load_mat,
    readable_name,
)
from rationality.data.base import MISSING_ANNOTATION_OPTION, Sample, register_dataset
from rationality.errors import DataError

SPLITS = ("train", "test")
CLASS_COUNT = 120
_LAYOUT_HINT = (
    "expected layout: root/Images/<wnid>-<Breed>/<file>.jpg, root/Annotation/<wnid>-<Breed>/<file stem> "
    "(VOC XML) and root/lists/{train,test}_list.mat"
)
_FOLDER = re.compile(r"(n\d+)-(.+)")
_BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@register_dataset("stanford_dogs")
class StanfordDogsReader(ListedReader):
    """Reads Stanford Dogs in its official layout (see the module docstring).

    Args:
        root: the directory holding ``Images``, ``Annotation`` and ``lists``.
        **options:
            ``missing_annotation`` (``fail`` | ``skip``, default ``fail``).
            ``expect_classes`` (int or null, default 120): required number of breed folders.
            ``bounds_tolerance`` (pixels >= 0, default 1): how far a box may reach beyond its image
            (1 accepts ``xmin = 0`` or ``xmax = width + 1``).

    Raises:
        DataError: naming the file, if the layout is missing or inconsistent.
        ConfigError: for an unknown or invalid option.
    """

    title = "Stanford Dogs"
    option_schemas = {"missing_annotation": MISSING_ANNOTATION_OPTION, "expect_classes": EXPECT_CLASSES_OPTION,
                      "bounds_tolerance": BOUNDS_TOLERANCE_OPTION}

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.bounds_tolerance = float(options.get("bounds_tolerance", DEFAULT_BOUNDS_TOLERANCE))
        policy = options.get("missing_annotation", "fail")
        self._folders = _breed_folders(self.root / "Images")
        check_class_count(
            len(self._folders), options.get("expect_classes", CLASS_COUNT),
            self.root / "Images", f"Stanford Dogs has {CLASS_COUNT} breeds",
        )
        self._class_names = tuple(readable_name(_FOLDER.fullmatch(folder)[2]) for folder in self._folders)

        listed = {split: self._read_list(self.split_source / f"{split}_list.mat") for split in SPLITS}
        self._check_listed(listed)
        self._annotations: dict[str, Path] = {}
        self._splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
        for split, entries in listed.items():
            for sample, annotation in entries:
                if self._annotated(sample, annotation, "annotation", policy):
                    self._annotations[sample.id] = annotation
                    self._splits[split].append(sample)

    @property
    def split_source(self) -> Path:
        return self.root / "lists"

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The union of the boxes of the sample's breed: bool [H, W]."""
        path = self._annotations.get(sample.id)
        if path is None:
            raise DataError(f"{self.root}: no annotation known for sample {sample.id!r}")
        wnid, breed = _FOLDER.fullmatch(self._folders[sample.label]).groups()
        boxes = _read_boxes(path, wnid, breed)
        size = image_size(sample.image_path)
        xs, ys = boxes[:, [0, 2]].reshape(-1), boxes[:, [1, 3]].reshape(-1)
        check_inside(xs, ys, size, self.bounds_tolerance, path, "a bndbox")
        return box_mask(boxes, size)

    def _read_list(self, path: Path) -> list[tuple[Sample, Path]]:
        """(sample, annotation path) of every entry of a split list, in list order."""
        files, annotations, labels = _read_list_file(path)
        entries = []
        for index, (file_entry, annotation_entry, label) in enumerate(zip(files, annotations, labels)):
            folder, _, name = file_entry.partition("/")
            where = f"{path}: entry {index + 1} ({file_entry})"
            if folder not in self._folders or not name.endswith(".jpg") or "/" in name:
                raise DataError(f"{where}: expected '<breed folder of Images/>/<file>.jpg' ({_LAYOUT_HINT})")
            if label - 1 != self._folders.index(folder):
                raise DataError(
                    f"{where}: label {label} disagrees with its folder, which is class "
                    f"{self._folders.index(folder) + 1} of the {len(self._folders)} sorted folders of Images/"
                )
            sample = Sample(Path(name).stem, label - 1, self.root / "Images" / folder / name)
            entries.append((sample, self.root / "Annotation" / annotation_entry))
        return entries

    def _check_listed(self, listed: dict[str, list[tuple[Sample, Path]]]) -> None:
        """No image may be listed twice, and every breed folder of Images/ must be listed."""
        samples = [sample for entries in listed.values() for sample, _ in entries]
        repeated = [sample_id for sample_id, count in Counter(sample.id for sample in samples).items() if count > 1]
        if repeated:
            raise DataError(f"{self.root / 'lists'}: images listed more than once: {describe_ids(repeated)}")
        used = {sample.label for sample in samples}
        unused = [folder for label, folder in enumerate(self._folders) if label not in used]
        if unused:
            raise DataError(
                f"{self.root / 'Images'}: {describe_ids(unused)} breed folders appear in neither "
                "lists/train_list.mat nor lists/test_list.mat"
            )


def _breed_folders(path: Path) -> list[str]:
    """The ``<wnid>-<Breed>`` folders of ``Images/``, sorted."""
    if not path.is_dir():
        raise DataError(f"{path}: Images directory is missing ({_LAYOUT_HINT})")
    if not (path.parent / "Annotation").is_dir():
        raise DataError(f"{path.parent / 'Annotation'}: Annotation directory is missing ({_LAYOUT_HINT})")
    folders = sorted(entry.name for entry in path.iterdir() if entry.is_dir())
    for folder in folders:
        if not _FOLDER.fullmatch(folder):
            raise DataError(f"{path / folder}: breed folder name must be '<wnid>-<Breed>', e.g. n02085620-Chihuahua")
    return folders


def _read_list_file(path: Path) -> tuple[list[str], list[str], list[int]]:
    """file_list, annotation_list (derived from file_list where absent) and labels of a list .mat."""
    if not path.is_file():
        raise DataError(f"{path}: split list is missing ({_LAYOUT_HINT})")
    content = load_mat(path, "split list")
    if "file_list" not in content or "labels" not in content:
        raise DataError(f"{path}: split list must hold file_list and labels, found {sorted(content)}")
    files = [_cell_text(path, cell) for cell in np.asarray(content["file_list"]).reshape(-1)]
    derived = [entry.removesuffix(".jpg") for entry in files]
    annotations = derived
    if "annotation_list" in content:
        annotations = [_cell_text(path, cell) for cell in np.asarray(content["annotation_list"]).reshape(-1)]
        if annotations != derived:
            raise DataError(f"{path}: annotation_list must be file_list without '.jpg', entry by entry")
    labels = np.asarray(content["labels"], dtype=np.float64).reshape(-1)
    if labels.shape != (len(files),):
        raise DataError(f"{path}: {labels.size} labels for {len(files)} files")
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)) or np.any(labels < 1):
        raise DataError(f"{path}: labels must be integers >= 1 (1-based class numbers)")
    return files, annotations, [int(label) for label in labels]


def _cell_text(path: Path, cell: Any) -> str:
    """The string of one MATLAB cell of a string list."""
    values = np.asarray(cell).reshape(-1)
    if values.size != 1 or not isinstance(values[0], str):
        raise DataError(f"{path}: expected a cell array of strings, got an element {cell!r}")
    return str(values[0])


def _read_boxes(path: Path, wnid: str, breed: str) -> np.ndarray:
    """The boxes of the objects named ``breed`` or ``wnid`` in a VOC XML file.

    Returns:
        float [N, 4] of (xmin, ymin, xmax, ymax), N >= 1, 1-based inclusive pixel indices.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{path}: annotation is unreadable or not XML ({exc})") from exc
    wanted = {_normal(breed), _normal(wnid)}
    names, boxes = [], []
    for number, item in enumerate(root.iter("object"), start=1):
        name = (item.findtext("name") or "").strip()
        names.append(name)
        if _normal(name) in wanted:
            boxes.append(_read_box(path, number, item.find("bndbox")))
    if not boxes:
        raise DataError(f"{path}: no object named {breed!r} (or {wnid}); object names found: {names}")
    return np.array(boxes, dtype=np.float64)


def _read_box(path: Path, number: int, bndbox: ET.Element | None) -> list[float]:
    """(xmin, ymin, xmax, ymax) of object ``number``'s bndbox; min <= max on both axes."""
    texts = [None if bndbox is None else bndbox.findtext(field) for field in _BOX_FIELDS]
    try:
        xmin, ymin, xmax, ymax = (float(text) for text in texts)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: object {number} needs a bndbox with numbers {'/'.join(_BOX_FIELDS)}, got {texts}"
        ) from exc
    if xmin > xmax or ymin > ymax:
        raise DataError(f"{path}: object {number} has an inverted box x {xmin:g}..{xmax:g}, y {ymin:g}..{ymax:g}")
    return [xmin, ymin, xmax, ymax]


def _normal(name: str) -> str:
    """``name`` for comparison: case folded, underscores as spaces."""
    return " ".join(name.replace("_", " ").split()).casefold()
