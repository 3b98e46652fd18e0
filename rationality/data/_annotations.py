"""Machinery shared by the readers of real datasets: a base for readers that list their splits up
front, options, class names, image sizes, and the rasterisation of polygon and box annotations into
masks.

Pixel convention (MATLAB's and Pascal VOC's): coordinates are 1-based and pixel (column i, row j)
is centred on the point (x=i, y=j), so a W x H image spans [0.5, W + 0.5] x [0.5, H + 0.5]. A region's
mask holds exactly the pixels whose **centres** lie inside the region; a VOC box
(xmin, ymin, xmax, ymax) therefore covers columns xmin..xmax and rows ymin..ymax inclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io
from PIL import Image

from rationality.data.base import DatasetReader, Sample
from rationality.errors import DataError

#: Default of the ``bounds_tolerance`` option: how far (in pixels) an annotation may reach beyond the
#: image's outer pixel edges before it is an error. Annotation tools often put a vertex on the first
#: or last pixel's outer edge, or a 0 into a 1-based coordinate; the overhang is clipped away.
DEFAULT_BOUNDS_TOLERANCE = 1.0

#: Option schemas several readers share (see ``DatasetReader.option_schemas``).
MASK_THRESHOLD_OPTION: dict[str, Any] = {
    "type": "number", "exclusiveMinimum": 0, "maximum": 1,
    "description": "a mask pixel is object when value / 255 >= it (default 0.5)"}
EXPECT_CLASSES_OPTION: dict[str, Any] = {
    "type": ["integer", "null"], "minimum": 1, "description": "required number of classes; null accepts any"}
BOUNDS_TOLERANCE_OPTION: dict[str, Any] = {
    "type": "number", "minimum": 0, "description": "pixels an annotation may overhang its image (default 1)"}

Size = tuple[int, int]  # (width, height) in pixels


class ListedReader(DatasetReader):
    """A reader that lists every sample of every split when it is built.

    Subclasses set ``title`` (the dataset's name in messages) and, in ``__init__``, ``_class_names``
    and ``_splits`` (split name -> samples in the reader's fixed order), adding each sample through
    :meth:`_annotated` so that the ``missing_annotation`` policy is applied in one place.
    """

    title: ClassVar[str]
    _class_names: tuple[str, ...]
    _splits: dict[str, list[Sample]]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def samples(self, split: str) -> list[Sample]:
        if split not in self._splits:
            known = ", ".join(self._splits) or "none"
            raise DataError(f"{self.split_source}: {self.title} has no split {split!r}; splits: {known}")
        return list(self._splits[split])

    @property
    def split_source(self) -> Path:
        """Where the splits are defined, for messages (a file or directory; the root unless overridden)."""
        return self.root

    def _annotated(self, sample: Sample, annotation: Path, kind: str, policy: str) -> bool:
        """Whether ``sample``'s ``kind`` file (e.g. ``"segmentation"``) exists at ``annotation``.

        If it does not: under ``policy`` ``skip`` the sample is recorded in ``skipped`` and False
        returned; under ``fail`` DataError names the file and the image.
        """
        if annotation.is_file():
            return True
        if policy != "skip":
            raise DataError(
                f"{annotation}: {kind} of image {sample.image_path} is missing "
                "(set option missing_annotation: skip to leave such images out)"
            )
        self.skipped.append((sample.id, f"{annotation}: {kind} is missing"))
        return False


def path_option(options: dict[str, Any], name: str) -> Path | None:
    """The path option ``name`` (relative paths are relative to the working directory), or None."""
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"option {name} must be a path, got {value!r}")
    return Path(value)


def check_class_count(found: int, expected: int | None, where: Path, layout: str) -> None:
    """Raise DataError if ``found`` classes differ from the ``expect_classes`` option (None: no check)."""
    if expected is not None and found != expected:
        raise DataError(
            f"{where}: found {found} classes but expected {expected} ({layout}); "
            "set option expect_classes to the number you mean to use, or null to accept any"
        )


def readable_name(name: str) -> str:
    """A folder-style class name made readable: underscores become spaces, case is kept."""
    return " ".join(name.replace("_", " ").split())


def describe_ids(ids: Iterable[str], limit: int = 5) -> str:
    """At most ``limit`` of ``ids`` (sorted), and how many there are, for an error message."""
    ordered = sorted(ids)
    shown = ", ".join(ordered[:limit])
    return f"{len(ordered)} ({shown}{', ...' if len(ordered) > limit else ''})"


def image_size(path: Path) -> Size:
    """(width, height) of the image at ``path``, read from its header only.

    Raises:
        DataError: naming the file if it is missing or not an image.
    """
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or not an image ({exc})") from exc


def load_mat(path: Path, what: str) -> dict[str, Any]:
    """The variables of the MATLAB file ``path`` (``what`` it is, for messages).

    Raises:
        DataError: naming the file if it is missing, truncated or not a MATLAB file.
    """
    if not path.is_file():
        raise DataError(f"{path}: {what} is missing")
    try:
        return scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, LookupError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        # scipy reports truncated or garbled files with any of these.
        raise DataError(f"{path}: {what} is corrupt or not a MATLAB file ({type(exc).__name__}: {exc})") from exc


def check_inside(xs: np.ndarray, ys: np.ndarray, size: Size, tolerance: float, path: Path, what: str) -> None:
    """Raise DataError unless every point lies within ``tolerance`` pixels of the image.

    Args:
        xs: float [K], 1-based x coordinates.
        ys: float [K], 1-based y coordinates.
        size: (width, height) of the image.
        tolerance: allowed overhang beyond the outer pixel edges (0.5 and side + 0.5), in pixels.
        path: the annotation file, for the message.
        what: what the points are (e.g. ``"contour"``), for the message.
    """
    width, height = size
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise DataError(f"{path}: {what} has non-finite coordinates")
    x_range = (float(xs.min()), float(xs.max()))
    y_range = (float(ys.min()), float(ys.max()))
    low, high = 0.5 - tolerance, np.array([width, height]) + 0.5 + tolerance
    if min(x_range[0], y_range[0]) < low or x_range[1] > high[0] or y_range[1] > high[1]:
        raise DataError(
            f"{path}: {what} spans x {x_range[0]:g}..{x_range[1]:g}, y {y_range[0]:g}..{y_range[1]:g} "
            f"(1-based pixels), beyond its {width}x{height} image by more than {tolerance:g} pixel(s); "
            "fix the annotation or raise option bounds_tolerance"
        )


def polygon_mask(xs: np.ndarray, ys: np.ndarray, size: Size) -> np.ndarray:
    """Fill a closed polygon: the pixels whose centres lie inside it (even-odd rule).

    A centre exactly on the boundary is settled half-open, as a scanline fill does: inside on
    edges that bound the polygon from the right or from above (larger x, smaller y), outside on
    edges that bound it from the left or from below, so polygons that tile the plane never share a
    pixel. Parts outside the image are clipped.

    Args:
        xs: float [K], 1-based x coordinates of the vertices, in order (closing edge implied).
        ys: float [K], 1-based y coordinates.
        size: (width, height) of the image.

    Returns:
        bool [height, width].
    """
    width, height = size
    x0, y0 = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(1, height + 1, dtype=np.float64)[:, None]
    # Edge e crosses the centre line of row r when min(y) <= r < max(y): horizontal edges never do.
    spans = (np.minimum(y0, y1) <= rows) & (rows < np.maximum(y0, y1))  # [height, K]
    row_index, edge = np.nonzero(spans)
    t = (row_index + 1 - y0[edge]) / (y1[edge] - y0[edge])
    crossing = x0[edge] + t * (x1[edge] - x0[edge])
    # A crossing toggles every pixel whose centre lies strictly right of it: 1-based columns
    # floor(crossing) + 1 onwards, i.e. 0-based index floor(crossing).
    first = np.clip(np.floor(crossing).astype(np.int64), 0, width)
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(toggles, (row_index, first), 1)
    return (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)


def box_mask(boxes: np.ndarray, size: Size) -> np.ndarray:
    """The union of boxes: the pixels whose centres lie in at least one box (edges included).

    Args:
        boxes: float [N, 4], rows (xmin, ymin, xmax, ymax) in 1-based pixel coordinates; for
            integer VOC boxes this is columns xmin..xmax and rows ymin..ymax inclusive.
        size: (width, height) of the image.

    Returns:
        bool [height, width]; parts outside the image are clipped.
    """
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        # 1-based pixels i with xmin <= i <= xmax are 0-based ceil(xmin) - 1 .. floor(xmax) - 1.
        left, right = max(math.ceil(xmin) - 1, 0), min(math.floor(xmax), width)
        top, bottom = max(math.ceil(ymin) - 1, 0), min(math.floor(ymax), height)
        mask[top:bottom, left:right] = True
    return mask
