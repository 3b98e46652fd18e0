"""The dataset-reader contract and its registry.

A reader turns a directory a user downloaded into samples with **stable string ids**,
integer labels, human-readable class names, and a ground-truth object mask per sample in the
original image frame. Everything downstream joins on the ids, never on positions.

Adding a dataset is one new module under ``rationality/data/`` that decorates its reader class
with :func:`register_dataset` (and is imported in :mod:`rationality.data._readers`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rationality._registry import Registry
from rationality.errors import ConfigError, DataError

#: What a reader does with an image that has no annotation (option ``missing_annotation``): ``fail``
#: raises DataError naming it; ``skip`` leaves it out and records it in ``DatasetReader.skipped``.
MISSING_ANNOTATION_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class Sample:
    """One image of a split: ``id`` is unique within the dataset and stable across runs."""

    id: str
    label: int
    image_path: Path


class DatasetReader(abc.ABC):
    """Reads one dataset from its on-disk layout.

    Args:
        root: the dataset's directory.
        **options: reader-specific options from the config's dataset spec.
    """

    def __init__(self, root: str | Path, **options: Any) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset directory does not exist")
        self.options = options
        #: (sample id or file, reason) of every image left out under ``missing_annotation: skip``.
        self.skipped: list[tuple[str, str]] = []

    @property
    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names of the splits this dataset has, e.g. ``("train", "test")``."""

    @property
    def mask_splits(self) -> tuple[str, ...]:
        """The splits whose samples have masks (all, unless a split is only for training)."""
        return self.splits

    @property
    @abc.abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """Human-readable class names, indexed by label."""

    @abc.abstractmethod
    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` in a fixed order. Raises DataError for an unknown split."""

    @abc.abstractmethod
    def load_mask(self, sample: Sample) -> np.ndarray:
        """The object mask of ``sample``: bool [H, W], same size as its image.

        Raises:
            DataError: naming the mask file if it is missing, corrupt, or of another size.
        """

    def load_image(self, sample: Sample) -> Image.Image:
        """The RGB image of ``sample``. Raises DataError naming the file if missing or corrupt."""
        return read_rgb_image(sample.image_path)


def missing_annotation_policy(options: dict[str, Any]) -> str:
    """The ``missing_annotation`` option (default ``fail``). Raises ConfigError for another value."""
    policy = options.get("missing_annotation", "fail")
    if policy not in MISSING_ANNOTATION_POLICIES:
        raise ConfigError(f"missing_annotation must be one of {MISSING_ANNOTATION_POLICIES}, got {policy!r}")
    return policy


def read_rgb_image(path: Path) -> Image.Image:
    """Open ``path`` fully (not lazily) as RGB; a missing or corrupt file raises DataError."""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or not an image ({exc})") from exc


_DATASETS: Registry[type[DatasetReader]] = Registry("dataset reader", "rationality.data._readers")

#: Class decorator: make a reader available to configs as ``reader: <name>``.
register_dataset = _DATASETS.register
#: Names of the registered dataset readers.
list_datasets = _DATASETS.names


def split_samples(reader: DatasetReader, split: str, dataset_name: str) -> list[Sample]:
    """The samples of a split a stage works on: ``reader.samples(split)``, which must not be empty.

    Raises:
        DataError: naming the dataset, the split and its root when the split has no samples.
    """
    samples = reader.samples(split)
    if not samples:
        raise DataError(f"dataset {dataset_name}: split {split!r} of {reader.root} has no samples")
    return samples


def create_dataset(reader: str, root: str | Path, **options: Any) -> DatasetReader:
    """Build the reader registered as ``reader`` for the dataset at ``root``.

    Raises:
        ConfigError: for an unknown reader name (the message lists the known ones).
    """
    return _DATASETS.get(reader)(root, **options)
