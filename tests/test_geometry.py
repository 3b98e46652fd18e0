"""Geometry: image and mask land on the same pixels, and images match open_clip's preprocessing."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import transforms

from rationality.data.geometry import Geometry
from rationality.data.loader import to_tensor

SIZES = [(97, 61), (61, 97), (224, 224), (300, 171)]
GEOMETRIES = [Geometry(64, 64), Geometry(256, 224), Geometry(71, 63)]
# Boxes as fractions (left, top, right, bottom) of the image: one inside the crop, one that the
# crop cuts on the long side.
BOXES = [(0.3, 0.25, 0.7, 0.75), (0.05, 0.1, 0.6, 0.9)]


def _expected_span(first: int, last: int, scale: float, offset: int, crop: int) -> tuple[int, int]:
    """Pixels [first, last] of the original, scaled, shifted by the crop offset, clipped."""
    start = round(first * scale) - offset
    stop = round((last + 1) * scale) - 1 - offset
    return max(start, 0), min(stop, crop - 1)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.name)
@pytest.mark.parametrize("box", BOXES)
def test_rectangle_lands_where_expected(
    size: tuple[int, int], geometry: Geometry, box: tuple[float, float, float, float]
) -> None:
    width, height = size
    x0, y0, x1, y1 = (int(f * n) for f, n in zip(box, (width, height, width, height)))
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([x0, y0, x1, y1], fill=(255, 255, 255))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True

    out_mask = geometry.apply_mask(mask)
    out_image = geometry.apply_image(image)
    assert out_mask.shape == (geometry.crop, geometry.crop)
    assert out_image.size == (geometry.crop, geometry.crop)

    resized_w, resized_h = geometry.resized_size(width, height)
    left, top, _, _ = geometry.crop_box(width, height)
    exp_x0, exp_x1 = _expected_span(x0, x1, resized_w / width, left, geometry.crop)
    exp_y0, exp_y1 = _expected_span(y0, y1, resized_h / height, top, geometry.crop)
    got = _bounding_box(out_mask)
    assert np.allclose(got, (exp_x0, exp_y0, exp_x1, exp_y1), atol=1), (got, (exp_x0, exp_y0, exp_x1, exp_y1))

    bright = np.asarray(out_image.convert("L")) >= 128
    iou = (bright & out_mask).sum() / (bright | out_mask).sum()
    assert iou > 0.9


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("side", [64, 224])
def test_apply_image_matches_open_clip(size: tuple[int, int], side: int) -> None:
    rng = np.random.default_rng(sum(size) + side)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    reference = open_clip.transform.image_transform(side, is_train=False)(image)

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    ours = (to_tensor(Geometry(side, side).apply_image(image)) - mean) / std
    assert ours.shape == reference.shape == (3, side, side)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.name)
def test_apply_image_matches_torchvision_resize_then_crop(size: tuple[int, int], geometry: Geometry) -> None:
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    reference = transforms.Compose([
        transforms.Resize(geometry.resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(geometry.crop),
    ])(image)
    assert np.array_equal(np.asarray(geometry.apply_image(image)), np.asarray(reference))


@pytest.mark.parametrize(("resize", "crop"), [(64, 65), (64, 0)])
def test_geometry_rejects_bad_crop(resize: int, crop: int) -> None:
    with pytest.raises(ValueError, match="crop"):
        Geometry(resize, crop)
