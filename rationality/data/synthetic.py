"""A seeded synthetic shape-classification dataset with exact object masks, and its reader.

Each image shows one textured shape (the class) on a cluttered background: a smooth colour
gradient, thin lines and small blobs. Shape and texture both identify the class (disk: stripes,
square: checks, triangle: dots, cross: rings), in a random colour, so a small model can learn the
object from local patches. The background's hue can carry a spurious cue: with
probability ``background_bias`` a ``train``-split image gets its class's fixed hue, so a model can
learn the background instead of the object; every other split always gets a random hue.

On-disk layout (read by :class:`SyntheticReader`, registered as ``reader: synthetic``)::

    root/
      classes.txt              one class name per line; label = line index (0-based)
      samples.csv              header ``sample_id,class_name,split``; one row per image
      images/<sample_id>.png   RGB
      masks/<sample_id>.png    8-bit grayscale, 255 = object, 0 = background, same size as image

Sample ids are ``f"{split}-{class_name}-{index:04d}"``. ``samples.csv`` is written last, so an
interrupted generation leaves no index behind.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import csv
import math
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rationality.data import _annotations
from rationality.data._annotations import MASK_THRESHOLD_OPTION, ListedReader
from rationality.data.base import Sample, register_dataset
from rationality.errors import DataError

CLASS_NAMES = ("disk", "square", "triangle", "cross")

#: The split whose backgrounds may carry the class cue; all other splits get random hues.
TRAIN_SPLIT = "train"

_CLASS_HUES = tuple(k / len(CLASS_NAMES) for k in range(len(CLASS_NAMES)))
_HUE_JITTER = 0.04
_SIZE_RANGE = (0.40, 0.65)  # object diameter as a fraction of the image's short side
_BLOB_RADIUS_RANGE = (0.02, 0.07)  # clutter blob radius as a fraction of the short side
_CROSS_ARM = 0.3  # half-width of a cross arm relative to its half-length
_MIN_SIDE = 16
_SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_]+")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CSV_HEADER = ["sample_id", "class_name", "split"]
_LAYOUT_HINT = (
    "expected layout: classes.txt, samples.csv (sample_id,class_name,split), "
    "images/<sample_id>.png, masks/<sample_id>.png"
)

RGB = tuple[float, float, float]


def generate_synthetic_dataset(
    root: Path,
    *,
    samples_per_class: Mapping[str, int],
    image_size: tuple[int, int] = (96, 80),
    background_bias: float = 0.0,
    seed: int = 0,
    workers: int = 1,
) -> None:
    """Write the synthetic dataset into ``root`` (created if needed) in the documented layout.

    Every third image of a class (index % 3 == 2) is portrait: its width and height are swapped.
    Each sample draws from its own generator keyed by (seed, split, class, index), so a sample's
    pixels do not depend on the other samples, and the same seed gives byte-identical files.

    Args:
        root: output directory.
        samples_per_class: split name -> number of images per class, e.g. ``{"train": 40}``.
        image_size: (width, height) of a landscape image, in pixels.
        background_bias: probability in [0, 1] that a ``train`` image's background has its class's
            hue instead of a random one.
        seed: non-negative master seed.
        workers: processes that render images (the files do not depend on it).

    Raises:
        ValueError: for an invalid argument.
    """
    _check_arguments(samples_per_class, image_size, background_bias, seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    index_path = root / "samples.csv"
    index_path.unlink(missing_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES), encoding="utf-8")

    tasks = [(root, seed, split, label, index, image_size, background_bias if split == TRAIN_SPLIT else 0.0)
             for split, count in samples_per_class.items()
             for label in range(len(CLASS_NAMES)) for index in range(count)]
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_write_sample, tasks, chunksize=16))
    else:
        rows = [_write_sample(task) for task in tasks]

    partial_path = root / "samples.csv.partial"
    with partial_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        writer.writerows(rows)
    os.replace(partial_path, index_path)


def _write_sample(task: tuple[Path, int, str, int, int, tuple[int, int], float]) -> list[str]:
    """Render and save one sample (its own generator, keyed by seed, split, class and index); its index row."""
    root, seed, split, label, index, image_size, background_bias = task
    class_name = CLASS_NAMES[label]
    sample_id = f"{split}-{class_name}-{index:04d}"
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), label, index)))
    size = image_size[::-1] if index % 3 == 2 else image_size
    image, mask = _render_sample(rng, label, size, background_bias)
    image.save(root / "images" / f"{sample_id}.png", format="PNG")
    mask.save(root / "masks" / f"{sample_id}.png", format="PNG")
    return [sample_id, class_name, split]


def _check_arguments(
    samples_per_class: Mapping[str, int], image_size: tuple[int, int], background_bias: float, seed: int
) -> None:
    for split, count in samples_per_class.items():
        if not _SPLIT_PATTERN.fullmatch(split):
            raise ValueError(f"split name {split!r} must be letters, digits or underscores")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"samples per class of split {split!r} must be an int >= 0, got {count!r}")
    if len(image_size) != 2 or min(image_size) < _MIN_SIDE:
        raise ValueError(f"image_size must be (width, height), both >= {_MIN_SIDE}, got {image_size!r}")
    if not 0.0 <= background_bias <= 1.0:
        raise ValueError(f"background_bias must be in [0, 1], got {background_bias!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _render_sample(
    rng: np.random.Generator, label: int, size: tuple[int, int], background_bias: float
) -> tuple[Image.Image, Image.Image]:
    """Draw one sample of class ``label`` at ``size`` = (width, height).

    Returns:
        The RGB image and its 'L' mask (255 on exactly the object's pixels, 0 elsewhere).
    """
    # Both hues are always drawn so that the bias only changes the tint, never the rest.
    use_cue = rng.random() < background_bias
    random_hue = rng.random()
    hue = _CLASS_HUES[label] if use_cue else random_hue
    background, background_value = _gradient(rng, size, hue)
    image = Image.fromarray(_to_uint8(background))
    _draw_clutter(rng, image)

    mask = Image.new("L", size, 0)
    _draw_shape(rng, ImageDraw.Draw(mask), CLASS_NAMES[label], size)
    pixels = np.array(image)
    inside = np.asarray(mask) == 255
    pixels[inside] = _to_uint8(_textured_fill(rng, label, size, background_value))[inside]
    return Image.fromarray(pixels), mask


def _gradient(rng: np.random.Generator, size: tuple[int, int], hue: float) -> tuple[np.ndarray, float]:
    """A linear gradient between two colours near ``hue``, along a random direction.

    Returns:
        float [H, W, 3] in [0, 1], and the mean HSV value of its two end colours.
    """
    width, height = size
    values = rng.uniform(0.5, 0.85, size=2)
    ends = [
        _hsv((hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0, rng.uniform(0.35, 0.7), value)
        for value in values
    ]
    projection = _projection(width, height, rng.uniform(0.0, 2.0 * math.pi))
    t = (projection - projection.min()) / (projection.max() - projection.min())
    start, end = (np.array(colour) for colour in ends)
    return start * (1.0 - t[..., None]) + end * t[..., None], float(values.mean())


def _draw_clutter(rng: np.random.Generator, image: Image.Image) -> None:
    """Thin lines and small blobs (far smaller than any object) of random colours."""
    width, height = image.size
    short = min(width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 10)):
        points = rng.uniform(0, 1, size=4) * [width, height, width, height]
        draw.line(points.tolist(), fill=_random_colour(rng), width=1)
    for _ in range(rng.integers(3, 9)):
        cx, cy = rng.uniform(0, 1, size=2) * [width, height]
        rx, ry = rng.uniform(*_BLOB_RADIUS_RANGE, size=2) * short
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_random_colour(rng))


def _draw_shape(rng: np.random.Generator, draw: ImageDraw.ImageDraw, shape: str, size: tuple[int, int]) -> None:
    """Fill ``shape`` with 255, inscribed in a random circle that lies fully inside the image."""
    width, height = size
    radius = rng.uniform(*_SIZE_RANGE) * min(width, height) / 2.0
    cx = rng.uniform(radius, width - 1 - radius)
    cy = rng.uniform(radius, height - 1 - radius)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if shape == "disk":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        return
    unit = _unit_polygon(shape)
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in unit]
    draw.polygon(points, fill=255)


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of ``shape`` centred at the origin, all within the unit circle."""
    if shape == "square":
        return [(math.cos(a), math.sin(a)) for a in (0.25 * math.pi, 0.75 * math.pi, 1.25 * math.pi, 1.75 * math.pi)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0)]
    if shape == "cross":
        a = _CROSS_ARM
        quarter = [(a, 1.0), (a, a), (1.0, a)]
        scale = 1.0 / math.hypot(1.0, a)
        # Rotating one quarter by 0, 90, 180, 270 degrees traces the 12 corners in order.
        turns = [(1, 0), (0, -1), (-1, 0), (0, 1)]
        return [(scale * (x * c - y * s), scale * (x * s + y * c)) for c, s in turns for x, y in quarter]
    raise ValueError(f"unknown shape {shape!r}")


def _textured_fill(rng: np.random.Generator, label: int, size: tuple[int, int], background_value: float) -> np.ndarray:
    """A saturated random colour modulated by the class's texture; dark on light backgrounds.

    Textures alternate the colour with a darker (light objects) or lighter (dark objects) shade:
    stripes (class 0), checks (1), dots (2), rings (3), with a random period of 4-7 pixels and a
    random orientation.

    Returns:
        float [H, W, 3] in [0, 1].
    """
    width, height = size
    dark_object = background_value >= 0.675
    value = rng.uniform(0.15, 0.35) if dark_object else rng.uniform(0.9, 1.0)
    colour = np.array(_hsv(rng.random(), rng.uniform(0.6, 1.0), value))
    period = rng.uniform(4.0, 7.0)
    angle = rng.uniform(0.0, math.pi)
    along = _projection(width, height, angle) / period
    across = _projection(width, height, angle + math.pi / 2.0) / period
    if label == 0:
        alternate = np.floor(along) % 2
    elif label == 1:
        alternate = (np.floor(along) + np.floor(across)) % 2
    elif label == 2:
        alternate = 1.0 - ((along % 1.0 - 0.5) ** 2 + (across % 1.0 - 0.5) ** 2 < 0.09)
    else:
        alternate = np.floor(np.hypot(along - along.mean(), across - across.mean())) % 2
    if dark_object:
        return colour + 0.4 * alternate[..., None]
    return colour * (1.0 - 0.45 * alternate[..., None])


def _projection(width: int, height: int, angle: float) -> np.ndarray:
    """Each pixel's position along direction ``angle`` (radians), in pixels.

    Returns:
        float [H, W].
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs * math.cos(angle) + ys * math.sin(angle)


def _hsv(hue: float, saturation: float, value: float) -> RGB:
    return colorsys.hsv_to_rgb(hue, saturation, value)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(c) for c in rng.integers(0, 256, size=3))
    return red, green, blue


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


@register_dataset("synthetic")
class SyntheticReader(ListedReader):
    """Reads the layout written by :func:`generate_synthetic_dataset` (see the module docstring).

    Args:
        root: the dataset's directory.
        **options: ``mask_threshold`` (number in (0, 1], default 0.5): a mask pixel is object when
            value / 255 >= it (the convention of the CUB reader; the generator writes 0 and 255).

    Raises:
        DataError: naming the file, if the layout is missing or inconsistent.
        ConfigError: for an unknown or invalid option.
    """

    title = "the synthetic dataset"
    option_schemas = {"mask_threshold": MASK_THRESHOLD_OPTION}

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.mask_threshold = float(options.get("mask_threshold", 0.5))
        self._class_names = _read_class_names(self.root / "classes.txt")
        self._splits = self._read_index(self.split_source)

    @property
    def split_source(self) -> Path:
        return self.root / "samples.csv"

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The object mask of ``sample``: bool [H, W], True where pixel value / 255 >= mask_threshold."""
        path = self.root / "masks" / f"{sample.id}.png"
        if not path.is_file():
            raise DataError(f"{path}: mask file is missing ({_LAYOUT_HINT})")
        try:
            with Image.open(path) as image:
                image.load()
                mode, pixels = image.mode, np.asarray(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: mask file is corrupt or not an image ({exc})") from exc
        if mode != "L":
            raise DataError(f"{path}: mask must be 8-bit grayscale (mode 'L'), got mode {mode!r}")
        mask_size = (pixels.shape[1], pixels.shape[0])
        picture_size = _annotations.image_size(sample.image_path)
        if mask_size != picture_size:
            raise DataError(
                f"{path}: mask is {mask_size[0]}x{mask_size[1]} but its image {sample.image_path} "
                f"is {picture_size[0]}x{picture_size[1]} (width x height)"
            )
        return pixels / 255.0 >= self.mask_threshold

    def _read_index(self, path: Path) -> dict[str, list[Sample]]:
        """Parse samples.csv into split -> samples in file order."""
        if not path.is_file():
            raise DataError(f"{path}: samples.csv is missing ({_LAYOUT_HINT})")
        labels = {name: label for label, name in enumerate(self._class_names)}
        splits: dict[str, list[Sample]] = {}
        seen: set[str] = set()
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header != _CSV_HEADER:
                raise DataError(f"{path}: header must be {','.join(_CSV_HEADER)}, got {header!r}")
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if len(row) != len(_CSV_HEADER):
                    raise DataError(f"{where}: expected 3 fields (sample_id,class_name,split), got {row!r}")
                sample_id, class_name, split = row
                if not _ID_PATTERN.fullmatch(sample_id):
                    raise DataError(f"{where}: sample id {sample_id!r} is not a valid file name stem")
                if sample_id in seen:
                    raise DataError(f"{where}: duplicate sample id {sample_id!r}")
                if class_name not in labels:
                    raise DataError(
                        f"{where}: unknown class {class_name!r}; classes.txt lists {', '.join(labels)}"
                    )
                seen.add(sample_id)
                image_path = self.root / "images" / f"{sample_id}.png"
                splits.setdefault(split, []).append(Sample(sample_id, labels[class_name], image_path))
        return splits


def _read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from classes.txt, one per line (a trailing newline is allowed)."""
    if not path.is_file():
        raise DataError(f"{path}: classes.txt is missing ({_LAYOUT_HINT})")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    if not names or "" in names:
        raise DataError(f"{path}: expected one non-empty class name per line")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names are not unique")
    return names
