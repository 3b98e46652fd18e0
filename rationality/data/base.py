"""The dataset-reader contract and its registry.

A reader turns a directory a user downloaded into samples with **stable string ids**,
integer labels, human-readable class names, and a ground-truth object mask per sample in the
original image frame. Everything downstream joins on the ids, never on positions.

Adding a dataset is one new module under ``rationality/data/`` that decorates its reader class
with :func:`register_dataset` (and is imported in :mod:`rationality.data._readers`). A reader declares
its options once, as JSON Schema (``option_schemas``): :func:`check_reader_options` checks a config's
options against it before any job runs, and the reader itself when it is built.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from rationality._registry import Registry
from rationality._validation import check_schema
from rationality.errors import ConfigError, DataError

#: What a reader does with an image that has no annotation (option ``missing_annotation``): ``fail``
#: raises DataError naming it; ``skip`` leaves it out and records it in ``DatasetReader.skipped``.
MISSING_ANNOTATION_POLICIES = ("fail", "skip")
#: Option schemas several readers share.
PATH_OPTION: dict[str, Any] = {"type": "string", "minLength": 1}
MISSING_ANNOTATION_OPTION: dict[str, Any] = {"enum": list(MISSING_ANNOTATION_POLICIES)}


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
        **options: reader-specific options from the config's dataset spec, as ``option_schemas``
            declares them (checked here; defaults are the reader's).

    Raises:
        ConfigError: naming the root and the option, for an unknown option or a bad value.
    """

    #: Option name -> JSON Schema of its value; any other option is an error.
    option_schemas: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Options that must be given.
    required_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, **options: Any) -> None:
        self.root = Path(root)
        try:
            check_options(type(self), options)
        except ConfigError as error:
            raise ConfigError(f"{self.root}: {error}") from None
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

    def source_file(self, sample: Sample) -> Path:
        """The file that identifies ``sample``'s content in :meth:`fingerprint`: its image. Readers whose
        images change but whose masks do not (corruptions read from disk) return the clean image."""
        return sample.image_path

    def fingerprint(self, split: str) -> str:
        """SHA-256 over the split's listing: class names, and every sample's id, label, source file name
        and size, in order. Stores record it; a store is resumed, and a cache scored against masks, only
        when the fingerprints agree, so a dataset regenerated or edited under the same name is noticed.

        Raises:
            DataError: naming a source file that is missing.
        """
        digest = hashlib.sha256(json.dumps(list(self.class_names)).encode())
        for sample in self.samples(split):
            path = self.source_file(sample)
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(f"{path}: image file is missing ({exc.strerror})") from exc
            digest.update(json.dumps([sample.id, sample.label, path.name, size]).encode())
        return digest.hexdigest()


def check_options(reader: type[DatasetReader], options: dict[str, Any]) -> None:
    """Check options against the reader's ``option_schemas`` and ``required_options``.

    Raises:
        ConfigError: about the option at fault (an unknown one lists the reader's).
    """
    check_schema(options, {"type": "object", "additionalProperties": False, "properties": reader.option_schemas,
                           "required": list(reader.required_options)})


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
#: The reader class registered under a name (ConfigError listing the known names otherwise).
dataset_class = _DATASETS.get


def check_reader_options(reader: str, options: dict[str, Any]) -> None:
    """Check a dataset spec's ``reader`` and ``options`` without reading the dataset (the config check).

    Raises:
        ConfigError: about ``reader`` (unknown: listing the registered ones) or ``options.<name>``.
    """
    try:
        cls = _DATASETS.get(reader)
    except ConfigError as error:
        raise error.within("reader") from None
    try:
        check_options(cls, options)
    except ConfigError as error:
        raise error.within("options") from None


def create_dataset(reader: str, root: str | Path, **options: Any) -> DatasetReader:
    """Build the reader registered as ``reader`` for the dataset at ``root``.

    Raises:
        ConfigError: for an unknown reader name (the message lists the known ones).
    """
    return _DATASETS.get(reader)(root, **options)
