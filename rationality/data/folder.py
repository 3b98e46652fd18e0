"""Image folders by split and class, with mask images or a CSV of boxes: the simplest way to bring data.

On-disk layout (``reader: folder``; ``root`` is the dataset directory)::

    root/
      train/<class>/<image>                    images: .jpg .jpeg .png .bmp .gif .tif .tiff .webp
      test/<class>/<image>
      masks/test/<class>/<image stem>.png      the object mask of test/<class>/<image>
      boxes.csv                                or boxes: image,xmin,ymin,xmax,ymax (option boxes)

Conventions:
    - Splits are the folders of ``root`` except the masks folder and hidden ones (option ``splits``
      names them instead). Classes are the class folders of every split, sorted by code point as
      torchvision's ``ImageFolder`` sorts them; label = position. Class names are the folder names as
      they are (prompts read ``_`` as a space).
    - Sample ids are ``<split>/<class>/<image stem>`` (``test/cat/0001``); ordered by id. Two images
      with one stem in a class folder are an error (their masks would share a file), as are images
      directly in a split folder and folders inside class folders. Other files are ignored.
    - Masks, one of:
        * mask images: ``<masks_dir>/<split>/<class>/<image stem>.png`` (``masks_dir`` default
          ``masks``), binary or soft 0..255; a pixel is object when value / 255 >= ``mask_threshold``
          (default 0.5), the mask's size must be its image's;
        * boxes: option ``boxes`` names a CSV with the columns ``image`` (the image's path under
          ``root``, ``test/cat/0001.jpg``), ``xmin``, ``ymin``, ``xmax``, ``ymax`` (other columns
          are ignored), one row per box, several rows per image for their union. Coordinates are
          pixels from the image's top-left corner, x to the right: a box holds the pixels whose
          centres lie inside it or on its edge, so the box (0, 0, 10, 5) is columns 0-9, rows 0-4.
          A box beyond its image by more than ``bounds_tolerance`` (default 1) pixels is an error.
    - A split with masks (its folder under ``masks_dir``, or a box of one of its images) needs one for
      every image (``missing_annotation: fail``), or leaves the others out (``skip``, counted); a split
      without any is for training only, listed without masks.
    - Relative paths in options are relative to ``root``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from rationality.data._annotations import (
    BOUNDS_TOLERANCE_OPTION,
    DEFAULT_BOUNDS_TOLERANCE,
    MASK_THRESHOLD_OPTION,
    ListedReader,
    box_mask,
    check_inside,
    image_size,
    read_mask_image,
    root_path,
)
from rationality.data.base import MISSING_ANNOTATION_OPTION, PATH_OPTION, Sample, register_dataset
from rationality.errors import DataError

#: Image file suffixes (any case), as torchvision's ``ImageFolder`` reads them.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BOX_COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax")
#: The reader's options (``FolderReader.option_schemas``).
OPTIONS: dict[str, dict[str, Any]] = {
    "splits": {"type": "array", "items": PATH_OPTION, "minItems": 1, "uniqueItems": True,
               "description": "the split folders (default every folder of root but the masks folder)"},
    "masks_dir": {**PATH_OPTION, "description": "the mask images' folder (default masks)"},
    "boxes": {**PATH_OPTION, "description": "a CSV of boxes (image,xmin,ymin,xmax,ymax) instead of mask images"},
    "mask_threshold": MASK_THRESHOLD_OPTION,
    "missing_annotation": MISSING_ANNOTATION_OPTION,
    "bounds_tolerance": BOUNDS_TOLERANCE_OPTION,
}
_LAYOUT_HINT = ("expected layout: root/<split>/<class>/<image> and masks/<split>/<class>/<image stem>.png "
                "(option masks_dir), or a CSV of boxes (option boxes)")


@register_dataset("folder")
class FolderReader(ListedReader):
    """Reads ``root/<split>/<class>/<image>`` with mask images or boxes (see the module docstring).

    Args:
        root: the dataset directory.
        **options:
            ``splits`` (list of folder names; default every folder of ``root`` but the masks folder).
            ``masks_dir`` (path, default ``masks``): the mask images' folder.
            ``boxes`` (path): a CSV of boxes; masks then come from it, not from mask images.
            ``mask_threshold`` (number in (0, 1], default 0.5): changes every mask, hence RMA.
            ``missing_annotation`` (``fail`` | ``skip``, default ``fail``).
            ``bounds_tolerance`` (pixels >= 0, default 1): how far a box may reach beyond its image.

    Raises:
        DataError: naming the file or folder, if the layout is missing or inconsistent.
        ConfigError: for an unknown or invalid option.
    """

    title = "folder dataset"
    option_schemas = OPTIONS

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.mask_threshold = float(options.get("mask_threshold", 0.5))
        self.bounds_tolerance = float(options.get("bounds_tolerance", DEFAULT_BOUNDS_TOLERANCE))
        policy = options.get("missing_annotation", "fail")
        self.masks_dir = root_path(self.root, options.get("masks_dir", "masks"), "masks_dir")
        self.boxes_file = root_path(self.root, options["boxes"], "boxes") if "boxes" in options else None

        listing = {split: self._list_split(split) for split in self._split_names(options.get("splits"))}
        self._class_names = tuple(sorted({name for classes in listing.values() for name in classes}))
        self._boxes = None if self.boxes_file is None else _read_boxes(self.boxes_file, self.root)
        self._mask_splits = tuple(split for split in listing if self._has_masks(split))
        self._splits: dict[str, list[Sample]] = {}
        for split, classes in listing.items():
            samples = [Sample(f"{split}/{name}/{path.stem}", self._class_names.index(name), path)
                       for name, paths in classes.items() for path in paths]
            self._splits[split] = [sample for sample in sorted(samples, key=lambda s: s.id)
                                   if split not in self._mask_splits or self._annotation_found(sample, policy)]

    @property
    def mask_splits(self) -> tuple[str, ...]:
        """The splits with masks (a folder under ``masks_dir``, or a box of one of their images)."""
        return self._mask_splits

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The object mask: bool [H, W], from the sample's mask image or the union of its boxes."""
        if self._boxes is None:
            return read_mask_image(self._mask_path(sample), sample.image_path, self.mask_threshold, "mask",
                                   _LAYOUT_HINT)
        relative = self._relative(sample)
        if relative not in self._boxes:
            raise DataError(f"{self.boxes_file}: no box for image {relative}")
        size = image_size(sample.image_path)
        corners = np.asarray(self._boxes[relative], dtype=np.float64) + 0.5  # to 1-based pixel centres
        check_inside(corners[:, [0, 2]].ravel(), corners[:, [1, 3]].ravel(), size, self.bounds_tolerance,
                     self.boxes_file, f"a box of {relative}")
        return box_mask(corners, size)

    def _split_names(self, option: Any) -> list[str]:
        """The split folders: the option's, else every folder of the root but the masks folder and hidden ones."""
        if option is not None:
            missing = [name for name in option if not (self.root / name).is_dir()]
            if missing:
                raise DataError(f"{self.root / missing[0]}: split folder does not exist ({_LAYOUT_HINT})")
            return list(option)
        names = sorted(entry.name for entry in self.root.iterdir()
                       if entry.is_dir() and not entry.name.startswith(".") and entry.resolve() != self.masks_dir.resolve())
        if not names:
            raise DataError(f"{self.root}: no split folders ({_LAYOUT_HINT})")
        return names

    def _list_split(self, split: str) -> dict[str, list[Path]]:
        """Class name -> its image files, sorted, of one split folder."""
        folder = self.root / split
        classes: dict[str, list[Path]] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                classes[entry.name] = _class_images(entry)
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"{entry}: image outside a class folder ({_LAYOUT_HINT})")
        if not classes:
            raise DataError(f"{folder}: split folder holds no class folders ({_LAYOUT_HINT}; option splits names "
                            f"the split folders)")
        return classes

    def _has_masks(self, split: str) -> bool:
        if self._boxes is None:
            return (self.masks_dir / split).is_dir()
        return any(PurePosixPath(relative).parts[0] == split for relative in self._boxes)

    def _annotation_found(self, sample: Sample, policy: str) -> bool:
        """Whether ``sample`` has its mask image or a box (else ``missing_annotation`` decides)."""
        if self._boxes is None:
            return self._annotated(sample, self._mask_path(sample), "mask", policy)
        relative = self._relative(sample)
        if relative in self._boxes:
            return True
        if policy != "skip":
            raise DataError(f"{self.boxes_file}: no box for image {relative} (set option missing_annotation: skip "
                            f"to leave such images out)")
        self.skipped.append((sample.id, f"{self.boxes_file}: no box"))
        return False

    def _mask_path(self, sample: Sample) -> Path:
        return self.masks_dir / Path(sample.id).parent / f"{sample.image_path.stem}.png"

    def _relative(self, sample: Sample) -> str:
        return sample.image_path.relative_to(self.root).as_posix()


def _class_images(folder: Path) -> list[Path]:
    """The image files of a class folder, sorted; DataError for a sub-folder or a repeated stem."""
    images: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise DataError(f"{entry}: folders inside a class folder are not read ({_LAYOUT_HINT})")
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if entry.stem in images:
            raise DataError(f"{entry}: another image of {folder} has the stem {entry.stem!r} ({images[entry.stem].name}); "
                            "sample ids and mask files are named by stem")
        images[entry.stem] = entry
    return list(images.values())


def _read_boxes(path: Path, root: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """The boxes CSV as {image path under root (POSIX): [(xmin, ymin, xmax, ymax), ...]}.

    Raises:
        DataError: naming the file (and line) for a missing file or column, a value that is not a
            finite number, an inverted box, or an image that does not exist.
    """
    if not path.is_file():
        raise DataError(f"{path}: boxes file is missing")
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        missing = [column for column in BOX_COLUMNS if column not in (rows.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: needs the columns {', '.join(BOX_COLUMNS)}; {', '.join(missing)} missing "
                            f"(header: {', '.join(rows.fieldnames or [])})")
        for row in rows:
            where = f"{path}, line {rows.line_num}"
            relative = PurePosixPath(row["image"] or "").as_posix()
            try:
                box = tuple(float(row[column]) for column in BOX_COLUMNS[1:])
            except (TypeError, ValueError):
                raise DataError(f"{where}: xmin, ymin, xmax, ymax must be numbers, got "
                                f"{[row[column] for column in BOX_COLUMNS[1:]]}") from None
            if not all(map(math.isfinite, box)) or box[0] > box[2] or box[1] > box[3]:
                raise DataError(f"{where}: box {list(box)} must be finite with xmin <= xmax and ymin <= ymax")
            if not (root / relative).is_file():
                raise DataError(f"{where}: image {relative!r} does not exist under {root}")
            boxes.setdefault(relative, []).append(box)
    return boxes
