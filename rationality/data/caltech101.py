"""Caltech-101: object outlines as masks, and a seeded stratified train/test split kept in a file.

On-disk layout (``root`` holds the two unpacked archives)::

    root/
      101_ObjectCategories/<category>/image_0001.jpg ...    102 folders; BACKGROUND_Google is no class
      Annotations/<annotation folder>/annotation_0001.mat   obj_contour (2 x K), box_coord (1 x 4)
      rationality-split-seed0-train0.8.json                 written by this reader (option split_file)

Four annotation folders are named differently from their category: ``Faces`` -> ``Faces_2``,
``Faces_easy`` -> ``Faces_3``, ``Motorbikes`` -> ``Motorbikes_16``, ``airplanes`` ->
``Airplanes_Side_2``. ``image_NNNN.jpg`` pairs with ``annotation_NNNN.mat``.

Conventions:
    - Classes are the category folders except ``BACKGROUND_Google``, sorted by code point as
      torchvision sorts them (``Faces``, ``Faces_easy``, ``Leopards``, ``Motorbikes``,
      ``accordion``, ...); label = position. Class names are the folder names with underscores as
      spaces, lowercased: ``Faces_easy`` -> ``faces easy``, ``car_side`` -> ``car side``.
    - Sample ids are ``<category>-<NNNN>`` from ``image_NNNN.jpg`` (``Faces_easy-0001``).
    - The mask is the outline ``obj_contour`` filled. Its points are offsets from the box's
      top-left corner, ``box_coord`` = [top, bottom, left, right], in MATLAB's 1-based pixel
      frame: x = obj_contour[0] + left, y = obj_contour[1] + top, exactly as the dataset's
      ``show_annotation.m`` draws them. A pixel is object when its centre lies inside the outline
      (see :mod:`rationality.data._annotations`).
    - The split: within each class, the image ids sorted, permuted by
      ``numpy.random.default_rng(SeedSequence(split_seed, spawn_key=(crc32(category),)))``; the
      first round-half-up(split_fraction x n) go to ``train`` (at least one image in each split
      when a class has two or more), the rest to ``test``. It is computed over every image
      present, annotated or not, and written to a JSON file on first use: ``{"dataset", "seed",
      "train_fraction", "train": [ids], "test": [ids]}``, ids sorted. Later runs read the file; it
      must list exactly the images present.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from rationality.data._annotations import (
    BOUNDS_TOLERANCE_OPTION,
    DEFAULT_BOUNDS_TOLERANCE,
    EXPECT_CLASSES_OPTION,
    ListedReader,
    check_class_count,
    check_inside,
    describe_ids,
    image_size,
    load_mat,
    path_option,
    polygon_mask,
    readable_name,
)
from rationality.data.base import MISSING_ANNOTATION_OPTION, PATH_OPTION, Sample, register_dataset
from rationality.errors import DataError

SPLITS = ("train", "test")
CLASS_COUNT = 101
BACKGROUND = "BACKGROUND_Google"
#: Category folder -> annotation folder, where the two differ.
ANNOTATION_FOLDERS = {
    "Faces": "Faces_2",
    "Faces_easy": "Faces_3",
    "Motorbikes": "Motorbikes_16",
    "airplanes": "Airplanes_Side_2",
}
_LAYOUT_HINT = (
    "expected layout: root/101_ObjectCategories/<category>/image_NNNN.jpg and "
    "root/Annotations/<annotation folder>/annotation_NNNN.mat"
)
_IMAGE_NAME = re.compile(r"image_(\d+)\.jpg")


@register_dataset("caltech101")
class Caltech101Reader(ListedReader):
    """Reads Caltech-101 (see the module docstring for the layout and conventions). A split's samples
    are ordered by label, then id.

    Args:
        root: the directory holding ``101_ObjectCategories`` and ``Annotations``.
        **options:
            ``split_seed`` (int >= 0, default 0) and ``split_fraction`` (number in (0, 1), default
            0.8): the seeded stratified split.
            ``split_file`` (path, default ``root/rationality-split-seed<seed>-train<fraction>.json``):
            where the split is read from, or written to on first use. Set it when root is read-only.
            ``missing_annotation`` (``fail`` | ``skip``, default ``fail``).
            ``expect_classes`` (int or null, default 101): required number of classes.
            ``bounds_tolerance`` (pixels >= 0, default 1): how far an outline may reach beyond its image.

    Raises:
        DataError: naming the file, if the layout is missing or inconsistent, or the split file
            cannot be written or disagrees with the images present.
        ConfigError: for an unknown or invalid option.
    """

    title = "Caltech-101"
    option_schemas = {
        "split_seed": {"type": "integer", "minimum": 0}, "split_fraction": {
            "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "split_file": PATH_OPTION, "missing_annotation": MISSING_ANNOTATION_OPTION,
        "expect_classes": EXPECT_CLASSES_OPTION, "bounds_tolerance": BOUNDS_TOLERANCE_OPTION,
    }

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.split_seed = options.get("split_seed", 0)
        self.split_fraction = float(options.get("split_fraction", 0.8))
        self.bounds_tolerance = float(options.get("bounds_tolerance", DEFAULT_BOUNDS_TOLERANCE))
        policy = options.get("missing_annotation", "fail")
        default_split_file = self.root / f"rationality-split-seed{self.split_seed}-train{self.split_fraction:g}.json"
        self.split_file = path_option(options, "split_file") or default_split_file

        categories = _category_folders(self.root / "101_ObjectCategories")
        check_class_count(
            len(categories), options.get("expect_classes", CLASS_COUNT),
            self.root / "101_ObjectCategories", f"Caltech-101 has {CLASS_COUNT} besides {BACKGROUND}",
        )
        self._class_names = tuple(readable_name(category).lower() for category in categories)
        by_class = [self._class_samples(label, category) for label, category in enumerate(categories)]
        split_of = self._load_or_write_split(
            {category: [sample.id for sample, _ in pairs] for category, pairs in zip(categories, by_class)}
        )

        self._annotations: dict[str, Path] = {}
        self._splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
        for sample, annotation in (pair for pairs in by_class for pair in pairs):
            if self._annotated(sample, annotation, "annotation", policy):
                self._annotations[sample.id] = annotation
                self._splits[split_of[sample.id]].append(sample)

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The filled object outline: bool [H, W]."""
        path = self._annotations.get(sample.id)
        if path is None:
            raise DataError(f"{self.root}: no annotation known for sample {sample.id!r}")
        contour, box = _read_annotation(path)
        xs, ys = contour[0] + box[2], contour[1] + box[0]
        size = image_size(sample.image_path)
        check_inside(xs, ys, size, self.bounds_tolerance, path, "obj_contour (offset by box_coord)")
        return polygon_mask(xs, ys, size)

    def _class_samples(self, label: int, category: str) -> list[tuple[Sample, Path]]:
        """(sample, annotation path) of every ``.jpg`` of ``category`` (other files are ignored), sorted by id."""
        folder = self.root / "101_ObjectCategories" / category
        annotation_folder = self.root / "Annotations" / ANNOTATION_FOLDERS.get(category, category)
        pairs = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() != ".jpg":
                continue
            match = _IMAGE_NAME.fullmatch(path.name)
            if match is None:
                raise DataError(f"{path}: image name must be image_NNNN.jpg to find its annotation ({_LAYOUT_HINT})")
            sample = Sample(f"{category}-{match[1]}", label, path)
            pairs.append((sample, annotation_folder / f"annotation_{match[1]}.mat"))
        if not pairs:
            raise DataError(f"{folder}: category folder holds no image_NNNN.jpg ({_LAYOUT_HINT})")
        return sorted(pairs, key=lambda pair: pair[0].id)

    def _load_or_write_split(self, ids_by_class: dict[str, list[str]]) -> dict[str, str]:
        """{sample id: split}, read from ``split_file``, or computed and written there first."""
        if not self.split_file.exists():
            self._write_split(stratified_split(ids_by_class, self.split_seed, self.split_fraction))
        return self._read_split({sample_id for ids in ids_by_class.values() for sample_id in ids})

    def _write_split(self, splits: dict[str, list[str]]) -> None:
        """Write the split file atomically; DataError says what to do if it cannot be written."""
        payload = {"dataset": "caltech101", "seed": self.split_seed, "train_fraction": self.split_fraction, **splits}
        partial = self.split_file.with_name(f".{self.split_file.name}.{os.getpid()}.partial")
        try:
            self.split_file.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
            os.replace(partial, self.split_file)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"{self.split_file}: cannot write the split file ({exc}); set option split_file to a writable path"
            ) from exc

    def _read_split(self, ids: set[str]) -> dict[str, str]:
        """Parse and check the split file against the options and the image ``ids`` present."""
        path = self.split_file
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: split file is unreadable or not JSON ({exc})") from exc
        if not isinstance(payload, dict) or not all(isinstance(payload.get(s), list) for s in SPLITS):
            raise DataError(f"{path}: split file must be a JSON object with lists 'train' and 'test'")
        written = (payload.get("seed"), payload.get("train_fraction"))
        if written != (self.split_seed, self.split_fraction):
            raise DataError(
                f"{path}: split file was written with seed {written[0]} and train fraction {written[1]}, but the "
                f"options ask for {self.split_seed} and {self.split_fraction:g}; delete it or set option split_file"
            )
        split_of = {sample_id: split for split in SPLITS for sample_id in payload[split]}
        if len(split_of) != sum(len(payload[split]) for split in SPLITS):
            raise DataError(f"{path}: split file lists a sample id twice")
        missing, extra = ids - split_of.keys(), split_of.keys() - ids
        if missing or extra:
            raise DataError(
                f"{path}: split file disagrees with the images present: {describe_ids(missing)} images are not "
                f"in it, {describe_ids(extra)} ids in it have no image; delete it to split again, or restore the images"
            )
        return split_of


def stratified_split(ids_by_class: dict[str, list[str]], seed: int, fraction: float) -> dict[str, list[str]]:
    """A seeded split of each class's ids into ``train`` and ``test`` (see the module docstring).

    The same ids, seed and fraction give the same split on every machine; a class's split does not
    depend on the other classes.

    Args:
        ids_by_class: class folder name -> its sample ids.
        seed: ``split_seed``.
        fraction: share of each class that goes to ``train``.

    Returns:
        {"train": ids, "test": ids}, each sorted.
    """
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for category, ids in ids_by_class.items():
        ordered = sorted(ids)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(category.encode()),)))
        permuted = [ordered[i] for i in rng.permutation(len(ordered))]
        n_train = math.floor(fraction * len(ordered) + 0.5)
        if len(ordered) >= 2:
            n_train = min(max(n_train, 1), len(ordered) - 1)
        splits["train"].extend(permuted[:n_train])
        splits["test"].extend(permuted[n_train:])
    return {split: sorted(ids) for split, ids in splits.items()}


def _category_folders(path: Path) -> list[str]:
    """The class folders of ``101_ObjectCategories``, sorted by code point, without the background."""
    if not path.is_dir():
        raise DataError(f"{path}: 101_ObjectCategories directory is missing ({_LAYOUT_HINT})")
    if not (path.parent / "Annotations").is_dir():
        raise DataError(f"{path.parent / 'Annotations'}: Annotations directory is missing ({_LAYOUT_HINT})")
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir() and entry.name != BACKGROUND)


def _read_annotation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``obj_contour`` float [2, K] (K >= 3) and ``box_coord`` float [4] of an annotation file."""
    content = load_mat(path, "annotation file")
    if "obj_contour" not in content or "box_coord" not in content:
        raise DataError(f"{path}: annotation must hold obj_contour and box_coord, found {sorted(content)}")
    contour = np.asarray(content["obj_contour"], dtype=np.float64)
    box = np.asarray(content["box_coord"], dtype=np.float64).reshape(-1)
    if contour.ndim != 2 or contour.shape[0] != 2 or contour.shape[1] < 3:
        raise DataError(f"{path}: obj_contour must be 2 x K with K >= 3 points, got shape {contour.shape}")
    if box.shape != (4,):
        raise DataError(f"{path}: box_coord must hold 4 numbers [top bottom left right], got {box.size}")
    return contour, box
