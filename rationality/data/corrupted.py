"""Any dataset with one of ImageNet-C's corruptions applied on the fly (``reader: corrupted``).

No on-disk layout of its own: it wraps the reader of the dataset at ``root``::

    datasets:
      cub-fog-3:
        reader: corrupted
        root: data/CUB_200_2011              # the base dataset's root
        options:
          base: {reader: cub, options: {}}   # the base reader and its options
          corruption: fog                    # see rationality.data.corruptions.CORRUPTIONS
          severity: 3                        # 1..5, or 0 for the clean image
          seed: 0                            # default 0
          pre_crop: [256, 224]               # optional
          jpeg_quality: 85                   # default 85, as ImageNet-C's files; null: no JPEG step
          frost_dir: data/imagenet-c-frost   # frost only: the generator's frost1.png ... frost5.jpg

Sample ids, labels, class names, splits, skipped images and masks are the base reader's, so a
corrupted store joins a clean one on ids. Order of operations for an image: the base image, then
the optional pre-crop (:class:`~rationality.data.geometry.PreCrop`, applied to the mask too), then
the corruption, then a JPEG round trip at ``jpeg_quality`` (ImageNet-C's generator saved every
corrupted image as JPEG at quality 85; not at severity 0), then (downstream) the model's geometry. With ``pre_crop: [256, 224]`` this is
ImageNet-C's own order (Hendrycks et al. corrupted after Resize(256) + CenterCrop(224)); without it
the corruption acts on the image at its original resolution. For ImageNet, putting ``pre_crop`` in
the ``imagenet`` base options instead is equivalent; setting both is an error.

Each image is corrupted by :func:`~rationality.data.corruptions.sample_rng` (``seed``, sample id):
the same sample always gets the same corruption, in any order, process or run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rationality.data.base import DatasetReader, Sample, create_dataset, register_dataset
from rationality.data.corruptions import (
    IMAGENET_C_JPEG_QUALITY, FrostImages, check_corruption, check_jpeg_quality, check_severity, corrupt, sample_rng,
)
from rationality.data.geometry import PreCrop
from rationality.data.imagenet import OPTIONS as IMAGENET_OPTIONS
from rationality.errors import ConfigError


@register_dataset("corrupted")
class CorruptedReader(DatasetReader):
    """The base dataset with a corruption applied to every image (see the module docstring).

    Args:
        root: the base dataset's directory.
        **options: ``base`` ({reader, options}), ``corruption``, ``severity``, ``seed``, ``pre_crop``,
            ``jpeg_quality``, ``frost_dir``.

    Raises:
        ConfigError: for a missing or invalid option (``frost`` without ``frost_dir``, or a
            ``frost_dir`` without the five frost photographs); the base reader's errors as they are.
    """

    option_schemas = {
        "base": {"type": "object", "additionalProperties": False, "required": ["reader"],
                 "properties": {"reader": {"type": "string"}, "options": {"type": "object"}},
                 "description": "the base dataset's {reader, options}"},
        "corruption": {"type": "string"}, "severity": {"type": "integer"}, "seed": {"type": "integer", "minimum": 0},
        "pre_crop": IMAGENET_OPTIONS["pre_crop"],
        "jpeg_quality": {"type": ["integer", "null"], "minimum": 1, "maximum": 100,
                         "description": "JPEG quality of the round trip after corrupting (null: none)"},
        "frost_dir": {"type": "string", "description": "the directory of ImageNet-C's frost photographs"},
    }
    required_options = ("base", "corruption", "severity")

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        base = options["base"]
        base_options = base.get("options", {})
        self.corruption = check_corruption(options["corruption"])
        self.severity = check_severity(options["severity"], allow_clean=True)
        self.seed = options.get("seed", 0)
        try:
            self.pre_crop = PreCrop.from_option(options.get("pre_crop"), str(self.root))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.pre_crop is not None and base_options.get("pre_crop") is not None:
            raise ConfigError(f"{self.root}: pre_crop is set both for the corrupted reader and its base reader; "
                              "set it once")
        self.jpeg_quality = check_jpeg_quality(options.get("jpeg_quality", IMAGENET_C_JPEG_QUALITY), str(self.root))
        frost_dir = options.get("frost_dir")
        if self.corruption == "frost" and frost_dir is None:
            raise ConfigError(f"{self.root}: corruption frost needs option frost_dir, the directory of ImageNet-C's "
                              "frost photographs (frost1.png ... frost5.jpg of hendrycks/robustness ImageNet-C/create_c/)")
        self.frost_images = FrostImages(frost_dir) if frost_dir is not None else None
        self.base = create_dataset(base["reader"], self.root, **base_options)
        self.skipped = self.base.skipped

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.base.class_names

    @property
    def splits(self) -> tuple[str, ...]:
        return self.base.splits

    def samples(self, split: str) -> list[Sample]:
        return self.base.samples(split)

    def load_image(self, sample: Sample) -> Image.Image:
        """The base image, pre-cropped if set, corrupted with the sample's own generator, JPEG round trip."""
        image = self.base.load_image(sample)
        if self.pre_crop is not None:
            image = self.pre_crop.apply_image(image)
        return corrupt(image, self.corruption, self.severity, sample_rng(self.seed, sample.id),
                       jpeg_quality=self.jpeg_quality, frost_images=self.frost_images)

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The base mask, pre-cropped if set: bool [H, W] of :meth:`load_image`'s image."""
        mask = self.base.load_mask(sample)
        return mask if self.pre_crop is None else self.pre_crop.apply_mask(mask)
