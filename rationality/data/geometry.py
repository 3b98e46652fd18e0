"""The one geometry that images and their masks share on the way into the model.

CLIP-style preprocessing: resize the short side to ``resize`` pixels (aspect kept), then take a
centered ``crop`` x ``crop`` square. The arithmetic follows torchvision's ``Resize(int)`` and
``CenterCrop`` (what open_clip's transform uses), so an image that goes through
:meth:`Geometry.apply_image` is pixel-identical to open_clip's preprocessing, and a mask that goes
through :meth:`Geometry.apply_mask` lands on the same pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Geometry:
    """Short-side resize then center crop.

    Attributes:
        resize: length of the short side after resizing, in pixels.
        crop: side of the square center crop, in pixels; the model-input frame is crop x crop.
    """

    resize: int
    crop: int

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"geometry needs 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")

    @property
    def name(self) -> str:
        """Stable name used in store paths, e.g. ``r224c224``."""
        return f"r{self.resize}c{self.crop}"

    @classmethod
    def from_name(cls, name: str) -> "Geometry":
        """Parse :attr:`name` (``r<resize>c<crop>``)."""
        match = re.fullmatch(r"r(\d+)c(\d+)", name)
        if match is None:
            raise ValueError(f"geometry name must look like r256c224, got {name!r}")
        return cls(resize=int(match[1]), crop=int(match[2]))

    def to_dict(self) -> dict[str, int]:
        return {"resize": self.resize, "crop": self.crop}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the short-side resize, rounded down as torchvision does."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the center crop in the resized image."""
        resized_w, resized_h = self.resized_size(width, height)
        top = int(round((resized_h - self.crop) / 2.0))
        left = int(round((resized_w - self.crop) / 2.0))
        return left, top, left + self.crop, top + self.crop

    def apply_image(self, image: Image.Image) -> Image.Image:
        """Resize (bicubic, antialiased) and crop an RGB image to crop x crop."""
        resized = image.resize(self.resized_size(*image.size), Image.Resampling.BICUBIC)
        return resized.crop(self.crop_box(*image.size))

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Bring a bool mask [H, W] of the original image into the model-input frame.

        The mask is resized as a float image (bilinear, antialiased), cropped with the image's
        box, and thresholded at 0.5: a pixel is object when at least half of it was.

        Returns:
            bool [crop, crop].
        """
        height, width = mask.shape
        as_float = Image.fromarray(mask.astype(np.float32), mode="F")
        resized = as_float.resize(self.resized_size(width, height), Image.Resampling.BILINEAR)
        cropped = np.asarray(resized.crop(self.crop_box(width, height)))
        return cropped >= 0.5
