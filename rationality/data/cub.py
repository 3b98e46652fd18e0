"""CUB-200-2011 (Caltech-UCSD Birds): the official train/test split and the soft segmentations.

On-disk layout (``root`` is the ``CUB_200_2011`` directory of the official archive)::

    CUB_200_2011/
      images.txt                "<image_id> <class dir>/<file>.jpg", one line per image
      image_class_labels.txt    "<image_id> <class_id>", class ids 1..200
      classes.txt               "<class_id> <class dir>", e.g. "1 001.Black_footed_Albatross"
      train_test_split.txt      "<image_id> <is_training_image>": 1 = train, 0 = test
      images/<class dir>/<file>.jpg
      segmentations/<class dir>/<file>.png     8-bit, 0..255 = share of annotators marking the bird
    segmentations/...           ...or here, where the separate segmentations archive unpacks

The four text files are joined **by image id**, never by line position. Splits: ``train`` (5,994
images in the real set) and ``test`` (5,794), each ordered by image id.

Conventions:
    - Sample ids are ``cub-<image_id>`` with the id of ``images.txt`` zero-padded to 5 digits
      (``cub-00001`` is image 1).
    - Labels are ``class_id - 1`` (0..199); class names are the class folders without the number
      prefix, underscores as spaces: ``001.Black_footed_Albatross`` -> ``Black footed Albatross``.
    - A segmentation pixel is object when ``value / 255 >= mask_threshold`` (default 0.5, i.e.
      value >= 128).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rationality.data._annotations import (
    EXPECT_CLASSES_OPTION,
    MASK_THRESHOLD_OPTION,
    ListedReader,
    check_class_count,
    describe_ids,
    image_size,
    path_option,
    readable_name,
)
from rationality.data.base import MISSING_ANNOTATION_OPTION, PATH_OPTION, Sample, register_dataset
from rationality.errors import DataError

SPLITS = ("train", "test")
CLASS_COUNT = 200
_LAYOUT_HINT = (
    "expected layout: CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, "
    "images/<class dir>/<file>.jpg} and segmentations/<class dir>/<file>.png inside it or next to it"
)
_SPLIT_FLAGS = {"1": "train", "0": "test"}
_CLASS_PREFIX = re.compile(r"^\d+\.")
_MASK_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


@register_dataset("cub")
class CUBReader(ListedReader):
    """Reads CUB-200-2011 in its official layout (see the module docstring).

    Args:
        root: the ``CUB_200_2011`` directory.
        **options:
            ``mask_threshold`` (number in (0, 1], default 0.5): a segmentation pixel is object when
            value / 255 >= it. Changes every mask, hence RMA.
            ``segmentations_dir`` (path, default ``root/segmentations``, else ``root/../segmentations``).
            ``missing_annotation`` (``fail`` | ``skip``, default ``fail``): an image without a
            segmentation raises DataError, or is left out and recorded in ``skipped``.
            ``expect_classes`` (int or null, default 200): required length of ``classes.txt``.

    Raises:
        DataError: naming the file, if the layout is missing or inconsistent.
        ConfigError: for an unknown or invalid option.
    """

    title = "CUB-200-2011"
    option_schemas = {"mask_threshold": MASK_THRESHOLD_OPTION, "segmentations_dir": PATH_OPTION,
                      "missing_annotation": MISSING_ANNOTATION_OPTION, "expect_classes": EXPECT_CLASSES_OPTION}

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.mask_threshold = float(options.get("mask_threshold", 0.5))
        policy = options.get("missing_annotation", "fail")
        expected = options.get("expect_classes", CLASS_COUNT)
        self.segmentations_dir = self._find_segmentations(path_option(options, "segmentations_dir"))

        class_dirs = _read_class_dirs(self.root / "classes.txt")
        check_class_count(len(class_dirs), expected, self.root / "classes.txt", "CUB-200-2011 has 200")
        self._class_names = tuple(
            readable_name(_CLASS_PREFIX.sub("", class_dirs[class_id])) for class_id in range(1, len(class_dirs) + 1)
        )
        images = _read_pairs(self.root / "images.txt")
        labels = _joined(self.root / "image_class_labels.txt", images)
        flags = _joined(self.root / "train_test_split.txt", images)
        self._splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
        for image_id in sorted(images):
            sample = self._sample(image_id, images[image_id], labels[image_id], class_dirs)
            split = _split_of(self.root / "train_test_split.txt", flags[image_id], image_id)
            segmentation = self._segmentation_path(sample)
            if self._annotated(sample, segmentation, "segmentation", policy):
                self._splits[split].append(sample)
        _check_labels_used(self.root, labels, class_dirs)

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The bird's mask: bool [H, W], True where segmentation value / 255 >= mask_threshold."""
        path = self._segmentation_path(sample)
        if not path.is_file():
            raise DataError(f"{path}: segmentation file is missing ({_LAYOUT_HINT})")
        try:
            with Image.open(path) as image:
                image.load()
                if image.mode not in _MASK_MODES:
                    raise DataError(f"{path}: segmentation must be an 8-bit image, got mode {image.mode!r}")
                pixels = np.asarray(image.convert("L"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: segmentation file is corrupt or not an image ({exc})") from exc
        width, height = image_size(sample.image_path)
        if pixels.shape != (height, width):
            raise DataError(
                f"{path}: segmentation is {pixels.shape[1]}x{pixels.shape[0]} but its image "
                f"{sample.image_path} is {width}x{height} (width x height)"
            )
        return pixels / 255.0 >= self.mask_threshold

    def _find_segmentations(self, option: Path | None) -> Path:
        """The segmentations directory: the option, else ``root/segmentations``, else ``root/../segmentations``."""
        if option is not None:
            candidates = [option]
        else:
            candidates = [self.root / "segmentations", self.root.parent / "segmentations"]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        tried = " or ".join(str(candidate) for candidate in candidates)
        raise DataError(f"{tried}: segmentations directory not found (option segmentations_dir; {_LAYOUT_HINT})")

    def _sample(self, image_id: int, relative: str, class_id: str, class_dirs: dict[int, str]) -> Sample:
        """The sample of one images.txt entry; its folder must be the class dir of its label."""
        label_file = self.root / "image_class_labels.txt"
        if not class_id.isdigit() or int(class_id) not in class_dirs:
            raise DataError(f"{label_file}: image {image_id} has class {class_id!r}, which classes.txt does not list")
        folder = relative.split("/", 1)[0]
        if folder != class_dirs[int(class_id)]:
            raise DataError(
                f"{self.root / 'images.txt'}: image {image_id} ({relative}) lies in folder {folder!r}, but "
                f"{label_file.name} gives class {class_id} ({class_dirs[int(class_id)]})"
            )
        return Sample(f"cub-{image_id:05d}", int(class_id) - 1, self.root / "images" / relative)

    def _segmentation_path(self, sample: Sample) -> Path:
        return self.segmentations_dir / sample.image_path.relative_to(self.root / "images").with_suffix(".png")


def _read_pairs(path: Path) -> dict[int, str]:
    """Lines ``<integer id> <value>`` as {id: value}. Raises DataError for a malformed or repeated id."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing ({_LAYOUT_HINT})")
    pairs: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataError(f"{path}, line {number}: expected '<integer id> <value>', got {line!r}")
        key = int(fields[0])
        if key in pairs:
            raise DataError(f"{path}, line {number}: id {key} appears twice")
        pairs[key] = fields[1]
    if not pairs:
        raise DataError(f"{path}: file is empty")
    return pairs


def _read_class_dirs(path: Path) -> dict[int, str]:
    """classes.txt as {class_id: class dir}; the ids must be exactly 1..N."""
    class_dirs = _read_pairs(path)
    if sorted(class_dirs) != list(range(1, len(class_dirs) + 1)):
        raise DataError(f"{path}: class ids must be 1..{len(class_dirs)}, each once")
    return class_dirs


def _joined(path: Path, images: dict[int, str]) -> dict[int, str]:
    """The pairs of ``path``, which must cover exactly the image ids of images.txt."""
    pairs = _read_pairs(path)
    missing, extra = images.keys() - pairs.keys(), pairs.keys() - images.keys()
    if missing or extra:
        raise DataError(
            f"{path}: image ids disagree with images.txt: missing {describe_ids(map(str, missing))}, "
            f"extra {describe_ids(map(str, extra))}"
        )
    return pairs


def _split_of(path: Path, flag: str, image_id: int) -> str:
    """The split named by an ``is_training_image`` flag of ``path``."""
    if flag not in _SPLIT_FLAGS:
        raise DataError(f"{path}: image {image_id} has is_training_image {flag!r}, expected 1 (train) or 0 (test)")
    return _SPLIT_FLAGS[flag]


def _check_labels_used(root: Path, labels: dict[int, str], class_dirs: dict[int, str]) -> None:
    """Every class of classes.txt must label at least one image."""
    unused = class_dirs.keys() - {int(class_id) for class_id in labels.values()}
    if unused:
        raise DataError(
            f"{root / 'image_class_labels.txt'}: classes.txt lists {len(class_dirs)} classes but "
            f"{describe_ids(class_dirs[c] for c in unused)} label no image"
        )
