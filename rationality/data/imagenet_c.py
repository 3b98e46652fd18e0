"""ImageNet-C from disk, with the masks of the ImageNet val images it was made from (``reader: imagenet_c``).

On-disk layout (the benchmark's tarballs unpacked into one folder)::

    root/
      <corruption>/<severity>/<wnid>/ILSVRC2012_val_00000293.JPEG   224 x 224, severity 1..5
      e.g. gaussian_noise/3/n01440764/ILSVRC2012_val_00000293.JPEG

plus the clean val set at option ``val_root`` in a layout :mod:`rationality.data.imagenet` reads.

ImageNet-C's generator took each val image through Resize(256) + CenterCrop(224) and then
corrupted it, so a sample's mask is its val mask through exactly that pre-crop
(:data:`~rationality.data.geometry.IMAGENET_C_PRE_CROP`), i.e. the ``imagenet`` reader's mask with
``pre_crop: [256, 224]``; the model's geometry follows as for any dataset. Sample ids, order,
labels and class names are the val reader's, so clean and corrupted stores join on ids; the clean
counterpart with the same field of view (severity 0) is ``reader: imagenet`` with ``pre_crop: [256, 224]``.

Options: ``corruption`` (a folder under root), ``severity`` (1..5), ``val_root``, and the ``imagenet``
reader's options for the val set (``images``, ``boxes``, ``class_names_file``, ``expect_classes``,
``missing_annotation``, ``bounds_tolerance``; relative paths are relative to ``val_root``).
A val image skipped for lack of annotation skips its corrupted counterpart too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rationality.data._annotations import describe_ids, image_size
from rationality.data.base import PATH_OPTION, DatasetReader, Sample, register_dataset
from rationality.data.corruptions import check_severity
from rationality.data.geometry import IMAGENET_C_PRE_CROP
from rationality.data.imagenet import OPTIONS as VAL_OPTIONS
from rationality.data.imagenet import SPLIT, ImageNetReader, scan_images
from rationality.errors import DataError

_OWN_OPTIONS = {"corruption": {"type": "string"}, "severity": {"type": "integer"}, "val_root": PATH_OPTION}


@register_dataset("imagenet_c")
class ImageNetCReader(DatasetReader):
    """Reads one (corruption, severity) of ImageNet-C (see the module docstring).

    Args:
        root: the ImageNet-C folder.
        **options: ``corruption``, ``severity``, ``val_root`` and the val reader's options.

    Raises:
        ConfigError: for a missing or invalid option.
        DataError: naming the folder or file, for a missing corruption or severity folder, a
            corrupted image without a val counterpart (or of another synset), or a val image
            without a corrupted one.
    """

    option_schemas = {**_OWN_OPTIONS, **{name: schema for name, schema in VAL_OPTIONS.items() if name != "pre_crop"}}
    required_options = tuple(_OWN_OPTIONS)

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.corruption, self.severity = options["corruption"], check_severity(options["severity"], allow_clean=False)
        val_options = {key: value for key, value in options.items() if key not in _OWN_OPTIONS}
        pre = IMAGENET_C_PRE_CROP
        self.val = ImageNetReader(options["val_root"], **val_options, pre_crop=[pre.resize, pre.crop])
        self.skipped.extend(self.val.skipped)
        self._samples = self._match(self._severity_folder())

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.val.class_names

    @property
    def splits(self) -> tuple[str, ...]:
        return (SPLIT,)

    def samples(self, split: str) -> list[Sample]:
        if split != SPLIT:
            raise DataError(f"{self.root}: no split {split!r}; ImageNet-C has only {SPLIT!r} (set test_split: val)")
        return [corrupted for corrupted, _ in self._samples.values()]

    def source_file(self, sample: Sample) -> Path:
        """The val image: ids, labels and masks are the val set's, the same for every corruption."""
        return self._samples[sample.id][1].image_path

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The val image's mask after Resize(256) + CenterCrop(224): bool [224, 224].

        Raises:
            DataError: naming the corrupted image if it is not 224 x 224.
        """
        _, clean = self._samples[sample.id]
        mask = self.val.load_mask(clean)
        size = image_size(sample.image_path)
        if size != (mask.shape[1], mask.shape[0]):
            raise DataError(f"{sample.image_path}: image is {size[0]}x{size[1]}, but ImageNet-C images are "
                            f"{mask.shape[1]}x{mask.shape[0]} (its val image {clean.image_path} after "
                            f"Resize({IMAGENET_C_PRE_CROP.resize}) + CenterCrop({IMAGENET_C_PRE_CROP.crop}))")
        return mask

    def _severity_folder(self) -> Path:
        corruptions = self.root / str(self.corruption)
        named = isinstance(self.corruption, str) and Path(self.corruption).name == self.corruption
        if not named or not corruptions.is_dir():
            present = ", ".join(sorted(p.name for p in self.root.iterdir() if p.is_dir())) or "none"
            raise DataError(f"{corruptions}: no such corruption folder (expected <corruption>/<severity>/<wnid>/"
                            f"<id>.JPEG); corruptions present: {present}")
        folder = corruptions / str(self.severity)
        if not folder.is_dir():
            present = ", ".join(sorted(p.name for p in corruptions.iterdir() if p.is_dir())) or "none"
            raise DataError(f"{folder}: no such severity folder; severities present: {present}")
        return folder

    def _match(self, folder: Path) -> dict[str, tuple[Sample, Sample]]:
        """Sample id -> (corrupted sample, val sample), in the val reader's order."""
        corrupted = scan_images(folder, dict(zip(self.val.wnids, range(len(self.val.wnids)))))
        clean = {sample.id: sample for sample in self.val.samples(SPLIT)}
        skipped = {sample_id for sample_id, _ in self.val.skipped}
        orphans = set(corrupted) - set(clean) - skipped
        if orphans:
            raise DataError(f"{folder}: {describe_ids(orphans)} corrupted images have no ImageNet val counterpart "
                            f"in {self.val.root}")
        absent = set(clean) - set(corrupted)
        if absent:
            raise DataError(f"{folder}: {describe_ids(absent)} val images have no corrupted counterpart "
                            "(incomplete ImageNet-C folder?)")
        matched = {}
        for sample_id, sample in clean.items():
            path, wnid = corrupted[sample_id]
            if wnid is not None and wnid != self.val.wnids[sample.label]:
                raise DataError(f"{path}: filed under synset {wnid}, but its val image {sample.image_path} is "
                                f"{self.val.wnids[sample.label]}")
            matched[sample_id] = (Sample(sample_id, sample.label, path), sample)
        return matched
