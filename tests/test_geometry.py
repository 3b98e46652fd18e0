"""Geometry: image and mask land on the same pixels, and images match open_clip's preprocessing."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import transforms

from rationality.data.geometry import Geometry, PreCrop
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


# --- pre-crop stage (ImageNet-C's Resize(256) + CenterCrop(224) before the model's geometry) ---

PRE_GEOMETRIES = [Geometry(64, 64, pre=PreCrop(256, 224)), Geometry(71, 63, pre=PreCrop(81, 75))]


def _draw_box(size: tuple[int, int], box: tuple[float, float, float, float]):
    """A white rectangle on black, and its bool mask; returns (image, mask, (x0, y0, x1, y1))."""
    width, height = size
    x0, y0, x1, y1 = (int(f * n) for f, n in zip(box, (width, height, width, height)))
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([x0, y0, x1, y1], fill=(255, 255, 255))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return image, mask, (x0, y0, x1, y1)


def _stage_span(box: tuple[int, int, int, int], size: tuple[int, int], stage: Geometry) -> tuple[int, int, int, int]:
    """Where an inclusive pixel box of a (width, height) image lands after one resize + crop stage."""
    width, height = size
    resized_w, resized_h = stage.resized_size(width, height)
    left, top, _, _ = stage.crop_box(width, height)
    x0, x1 = _expected_span(box[0], box[2], resized_w / width, left, stage.crop)
    y0, y1 = _expected_span(box[1], box[3], resized_h / height, top, stage.crop)
    return x0, y0, x1, y1


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("geometry", PRE_GEOMETRIES, ids=lambda g: g.name)
@pytest.mark.parametrize("box", BOXES)
def test_rectangle_lands_where_expected_after_pre_crop(
    size: tuple[int, int], geometry: Geometry, box: tuple[float, float, float, float]
) -> None:
    image, mask, drawn = _draw_box(size, box)
    out_mask = geometry.apply_mask(mask)
    out_image = geometry.apply_image(image)
    assert out_mask.shape == (geometry.crop, geometry.crop)
    assert out_image.size == (geometry.crop, geometry.crop)

    pre = geometry.pre
    after_pre = _stage_span(drawn, size, Geometry(pre.resize, pre.crop))
    expected = _stage_span(after_pre, (pre.crop, pre.crop), Geometry(geometry.resize, geometry.crop))
    got = _bounding_box(out_mask)
    assert np.allclose(got, expected, atol=2), (got, expected)

    bright = np.asarray(out_image.convert("L")) >= 128
    iou = (bright & out_mask).sum() / (bright | out_mask).sum()
    assert iou > 0.9


@pytest.mark.parametrize("size", SIZES)
def test_pre_crop_image_matches_imagenet_c_generator_transform(size: tuple[int, int]) -> None:
    """make_imagenet_c.py: torchvision Resize(256) (bilinear default) + CenterCrop(224)."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(image)
    assert np.array_equal(np.asarray(PreCrop(256, 224).apply_image(image)), np.asarray(reference))


@pytest.mark.parametrize("size", [(97, 61), (61, 97)])
def test_pre_crop_geometry_equals_pre_crop_then_plain_geometry(size: tuple[int, int]) -> None:
    """A reader that pre-crops, under the plain geometry, gives the same pixels and masks."""
    image, mask, _ = _draw_box(size, BOXES[1])
    pre, plain = PreCrop(256, 224), Geometry(64, 64)
    combined = Geometry(64, 64, pre=pre)
    assert np.array_equal(combined.apply_mask(mask), plain.apply_mask(pre.apply_mask(mask)))
    assert np.array_equal(np.asarray(combined.apply_image(image)),
                          np.asarray(plain.apply_image(pre.apply_image(image))))


def test_geometry_names_and_dicts() -> None:
    plain, pre = Geometry(224, 224), Geometry(224, 224, pre=PreCrop(256, 224))
    assert plain.name == "r224c224" and plain.to_dict() == {"resize": 224, "crop": 224}
    assert pre.name == "p256c224-r224c224"
    assert pre.to_dict() == {"resize": 224, "crop": 224, "pre_resize": 256, "pre_crop": 224}
    assert Geometry.from_name("r224c224") == plain
    assert Geometry.from_name("p256c224-r224c224") == pre
    for bad in ("r224", "p256c224r224c224", "p256-r224c224", "r224c224-p256c224"):
        with pytest.raises(ValueError, match="geometry name"):
            Geometry.from_name(bad)
    with pytest.raises(ValueError, match="pre-crop"):
        Geometry.from_name("p224c256-r224c224")


def test_pre_crop_option_parsing() -> None:
    assert PreCrop.from_option(None, "x") is None
    assert PreCrop.from_option([256, 224], "x") == PreCrop(256, 224)
    for bad in (256, [256], [256, 224.0], "256,224", [True, 1]):
        with pytest.raises(ValueError, match="pre_crop"):
            PreCrop.from_option(bad, "x")
