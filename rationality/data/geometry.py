"""The one geometry that images and their masks share on the way into the model.

CLIP-style preprocessing: resize the short side to ``resize`` pixels (aspect kept), then take a
centered ``crop`` x ``crop`` square. The arithmetic follows torchvision's ``Resize(int)`` and
``CenterCrop`` (what open_clip's transform uses), so an image that goes through
:meth:`Geometry.apply_image` is pixel-identical to open_clip's preprocessing, and a mask that goes
through :meth:`Geometry.apply_mask` lands on the same pixels.

An optional **pre-crop** stage (:class:`PreCrop`) comes first: ImageNet-C's generator
(``make_imagenet_c.py``) applied ``Resize(256)`` + ``CenterCrop(224)`` to every val image before
corrupting it, so a clean image must take the same stage to show the same field of view as its
corrupted versions. A geometry with a pre-crop is named ``p<resize>c<crop>-r<resize>c<crop>``
(``p256c224-r224c224``); one without keeps its old name (``r224c224``).

Readers that serve pre-cropped images (``imagenet`` and ``corrupted`` with option ``pre_crop``, and
``imagenet_c``, whose files are pre-cropped) apply the same :class:`PreCrop`, so a reader with
``pre_crop`` under ``r224c224`` gives exactly the masks of the plain reader under ``p256c224-r224c224``.
Never combine the two: the pre-crop would be applied twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

_STAGE = r"(\d+)c(\d+)"


def _check_stage(resize: int, crop: int, what: str) -> None:
    if not 0 < crop <= resize:
        raise ValueError(f"{what} needs 0 < crop <= resize, got crop={crop}, resize={resize}")


def _resized_size(resize: int, width: int, height: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``resize``, rounded down as torchvision does."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def _crop_box(resize: int, crop: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the center crop in the resized image, as torchvision's CenterCrop."""
    resized_w, resized_h = _resized_size(resize, width, height)
    top = int(round((resized_h - crop) / 2.0))
    left = int(round((resized_w - crop) / 2.0))
    return left, top, left + crop, top + crop


def _resize_crop_image(image: Image.Image, resize: int, crop: int, resample: Image.Resampling) -> Image.Image:
    resized = image.resize(_resized_size(resize, *image.size), resample)
    return resized.crop(_crop_box(resize, crop, *image.size))


def _resize_crop_mask(mask: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Resize a bool mask as a float image (bilinear, antialiased), crop, threshold at 0.5."""
    height, width = mask.shape
    as_float = Image.fromarray(mask.astype(np.float32), mode="F")
    resized = as_float.resize(_resized_size(resize, width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized.crop(_crop_box(resize, crop, width, height))) >= 0.5


@dataclass(frozen=True)
class PreCrop:
    """Short-side resize then center crop, applied before the model's geometry.

    Images are resampled **bilinearly** (torchvision ``Resize``'s default, which
    ``make_imagenet_c.py`` used), unlike the model stage's bicubic.

    Attributes:
        resize: length of the short side after resizing, in pixels (ImageNet-C: 256).
        crop: side of the square center crop, in pixels (ImageNet-C: 224).
    """

    resize: int
    crop: int

    def __post_init__(self) -> None:
        _check_stage(self.resize, self.crop, "pre-crop")

    @property
    def name(self) -> str:
        """``p<resize>c<crop>``, e.g. ``p256c224``."""
        return f"p{self.resize}c{self.crop}"

    def apply_image(self, image: Image.Image) -> Image.Image:
        """Resize (bilinear, antialiased) and crop an RGB image to crop x crop."""
        return _resize_crop_image(image, self.resize, self.crop, Image.Resampling.BILINEAR)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask [H, W] of the original image in the pre-cropped frame: bool [crop, crop]."""
        return _resize_crop_mask(mask, self.resize, self.crop)

    @classmethod
    def from_option(cls, value: Any, source: str) -> "PreCrop | None":
        """Parse a reader's ``pre_crop`` option: ``[resize, crop]`` (e.g. ``[256, 224]``) or null.

        Raises:
            ValueError: naming ``source`` for any other value.
        """
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"{source}: option pre_crop must be [resize, crop], e.g. [256, 224], got {value!r}")
        return cls(*value)


#: The pre-crop ImageNet-C's files went through (Resize(256) + CenterCrop(224)).
IMAGENET_C_PRE_CROP = PreCrop(256, 224)


@dataclass(frozen=True)
class Geometry:
    """An optional pre-crop, then short-side resize and center crop.

    Attributes:
        resize: length of the short side after resizing, in pixels.
        crop: side of the square center crop, in pixels; the model-input frame is crop x crop.
        pre: the pre-crop stage applied first, or None.
    """

    resize: int
    crop: int
    pre: PreCrop | None = None

    def __post_init__(self) -> None:
        _check_stage(self.resize, self.crop, "geometry")

    @property
    def name(self) -> str:
        """Stable name used in store paths, e.g. ``r224c224`` or ``p256c224-r224c224``."""
        stage = f"r{self.resize}c{self.crop}"
        return stage if self.pre is None else f"{self.pre.name}-{stage}"

    @classmethod
    def from_name(cls, name: str) -> "Geometry":
        """Parse :attr:`name`: ``r<resize>c<crop>``, optionally prefixed by ``p<resize>c<crop>-``."""
        match = re.fullmatch(rf"(?:p{_STAGE}-)?r{_STAGE}", name)
        if match is None:
            raise ValueError(f"geometry name must look like r224c224 or p256c224-r224c224, got {name!r}")
        pre = None if match[1] is None else PreCrop(int(match[1]), int(match[2]))
        return cls(resize=int(match[3]), crop=int(match[4]), pre=pre)

    def to_dict(self) -> dict[str, int]:
        """``{resize, crop}``, plus ``{pre_resize, pre_crop}`` when there is a pre-crop."""
        stages = {"resize": self.resize, "crop": self.crop}
        if self.pre is not None:
            stages.update(pre_resize=self.pre.resize, pre_crop=self.pre.crop)
        return stages

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the model stage's short-side resize of a (width, height) input to it."""
        return _resized_size(self.resize, width, height)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the model stage's center crop, for a (width, height) input to it."""
        return _crop_box(self.resize, self.crop, width, height)

    def apply_image(self, image: Image.Image) -> Image.Image:
        """Pre-crop (if any), then resize (bicubic, antialiased) and crop an RGB image to crop x crop."""
        if self.pre is not None:
            image = self.pre.apply_image(image)
        return _resize_crop_image(image, self.resize, self.crop, Image.Resampling.BICUBIC)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Bring a bool mask [H, W] of the original image into the model-input frame.

        Each stage resizes the mask as a float image (bilinear, antialiased), crops it with the
        image's box, and thresholds at 0.5: a pixel is object when at least half of it was. The
        threshold after the pre-crop makes the result identical to pre-cropping in a reader.

        Returns:
            bool [crop, crop].
        """
        if self.pre is not None:
            mask = self.pre.apply_mask(mask)
        return _resize_crop_mask(mask, self.resize, self.crop)
