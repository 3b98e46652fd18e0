"""ImageNet-C's corruptions, applied on the fly with a per-sample random generator.

The parameters per severity (1-5) are the published ones of ImageNet-C's generator
(hendrycks/robustness, ``make_imagenet_c.py``, the 224 x 224 version); the implementations are our
own, on numpy, scipy and Pillow. 14 of its 15 corruptions are here; ``frost`` is not, because it
blends in photographs of frost that ship only with that generator.

Where the results differ from ImageNet-C's files:

* ``motion_blur`` and ``snow`` (which motion-blurs its snow layer) used ImageMagick's motion blur;
  ours is a one-sided Gaussian-weighted average of copies shifted along the blur direction, with
  the same radius and sigma: the same kind of streak, not the same pixels.
* Random draws come from a ``numpy.random.Generator``, not the global generator, so even the other
  corruptions match ImageNet-C in distribution, not pixel for pixel.
* Parameters in pixels (blur radii and sigmas, glass-blur shifts, elastic displacements) are
  absolute, as published for 224 x 224 images: on a larger image they distort less of it. Give
  the ``corrupted`` reader ``pre_crop: [256, 224]`` to corrupt at ImageNet-C's resolution.

As in the generator, the result is clipped to [0, 1], scaled by 255 and truncated to uint8.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.signal import fftconvolve

from rationality.errors import ConfigError

#: Severities of a corruption; 0 means none (the clean image).
SEVERITIES = (1, 2, 3, 4, 5)

Pixels = np.ndarray  # uint8 [H, W, 3]
Corruption = Callable[[Pixels, Any, np.random.Generator], np.ndarray]


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """The generator that corrupts ``sample_id``: keyed by ``seed`` and the CRC-32 of the id.

    The key does not depend on the corruption or severity, so the severities of one corruption
    share their random draws (e.g. one noise pattern, scaled), and curves over severity are smooth.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(sample_id.encode("utf-8")),)))


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """Apply corruption ``name`` at ``severity`` to an image.

    Args:
        image: any PIL image; converted to RGB.
        name: one of :data:`CORRUPTIONS`.
        severity: 0 (returns the RGB image unchanged) to 5.
        rng: the source of every random draw (see :func:`sample_rng`).

    Returns:
        An RGB image of the same size.

    Raises:
        ConfigError: for an unknown corruption or severity.
    """
    function, levels = _corruption(name)
    check_severity(severity, allow_clean=True)
    rgb = image.convert("RGB")
    if severity == 0:
        return rgb
    out = function(np.asarray(rgb), levels[severity - 1], rng)
    return Image.fromarray((np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8))


def check_corruption(name: Any) -> str:
    """``name`` if it is a known corruption; raises ConfigError listing the known ones otherwise."""
    _corruption(name)
    return name


def check_severity(severity: Any, allow_clean: bool) -> int:
    """``severity`` if it is an int in 1..5 (0..5 with ``allow_clean``); raises ConfigError otherwise."""
    low = 0 if allow_clean else 1
    if isinstance(severity, bool) or not isinstance(severity, int) or not low <= severity <= SEVERITIES[-1]:
        raise ConfigError(f"severity must be an integer in {low}..{SEVERITIES[-1]}, got {severity!r}")
    return severity


def _corruption(name: Any) -> tuple[Corruption, tuple[Any, ...]]:
    if not isinstance(name, str) or name not in _CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    return _CORRUPTIONS[name]


def _unit(pixels: Pixels) -> np.ndarray:
    """uint8 [H, W, 3] -> float64 [H, W, 3] in [0, 1]."""
    return pixels.astype(np.float64) / 255.0


# --- noise ---

def _gaussian_noise(pixels: Pixels, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive N(0, sigma^2) noise on [0, 1] intensities, independent per value."""
    return _unit(pixels) + rng.normal(scale=sigma, size=pixels.shape)


def _shot_noise(pixels: Pixels, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson(x * photons) / photons: mean x, variance x / photons."""
    return rng.poisson(_unit(pixels) * photons) / photons


def _impulse_noise(pixels: Pixels, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each value becomes 0 or 1 (equally likely) with probability ``amount``."""
    x = _unit(pixels)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit] = salt[hit]
    return x


# --- blur ---

def _per_channel_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of float [H, W, C] with a symmetric [k, k] kernel, mirrored borders
    (edge pixel not repeated, OpenCV's default)."""
    half = kernel.shape[0] // 2
    padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode="reflect")
    return fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))


def _gaussian_taps(half: int, sigma: float) -> np.ndarray:
    taps = np.exp(-np.arange(-half, half + 1) ** 2 / (2.0 * sigma**2))
    return taps / taps.sum()


def _defocus_blur(pixels: Pixels, level: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Convolution with a disk of ``radius`` whose edge is softened by a Gaussian of ``alias_blur``."""
    radius, alias_blur = level
    half = max(8, int(radius))
    offsets = np.arange(-half, half + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_taps(1 if radius <= 8 else 2, alias_blur)
    kernel = ndimage.convolve1d(ndimage.convolve1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")
    return _per_channel_filter(_unit(pixels), kernel)


def _spatial_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of float [H, W, C] over H and W, nearest-edge borders."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest")


def _glass_blur(pixels: Pixels, level: tuple[float, int, int], rng: np.random.Generator) -> np.ndarray:
    """Blur, then ``iterations`` sweeps that swap each interior pixel (bottom-right to top-left)
    with a random one at most ``max_delta`` pixels away, then blur again."""
    sigma, max_delta, iterations = level
    x = (np.clip(_spatial_gaussian(_unit(pixels), sigma), 0.0, 1.0) * 255.0).astype(np.uint8)
    height, width = pixels.shape[:2]
    rows = range(height - max_delta, max_delta, -1)
    cols = range(width - max_delta, max_delta, -1)
    # Swapping pixels in place equals swapping entries of the index map `source`
    # (pixel p now holds the pixel originally at source[p]); Python ints keep the loop fast.
    source = list(range(height * width))
    for _ in range(iterations):
        shifts = rng.integers(-max_delta, max_delta, size=(len(rows) * len(cols), 2)).tolist()
        step = 0
        for h in rows:
            for w in cols:
                dx, dy = shifts[step]
                step += 1
                a, b = h * width + w, (h + dy) * width + (w + dx)
                source[a], source[b] = source[b], source[a]
    shuffled = x.reshape(-1, 3)[np.asarray(source)].reshape(x.shape)
    return _spatial_gaussian(shuffled.astype(np.float64) / 255.0, sigma)


def _shifted(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``x`` [H, W, ...] moved by (dx, dy) pixels, edge pixels repeated into the gap."""
    height, width = x.shape[:2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return x[rows][:, cols]


def _motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """One-sided motion blur of float [H, W, ...]: the weighted mean of copies shifted by
    0..2*radius pixels along ``angle`` (degrees), weights exp(-i^2 / (2 sigma^2))."""
    steps = np.arange(2 * radius + 1)
    weights = np.exp(-steps**2 / (2.0 * sigma**2))
    weights /= weights.sum()
    direction = (math.cos(math.radians(angle)), math.sin(math.radians(angle)))
    out = np.zeros_like(x, dtype=np.float64)
    for step, weight in zip(steps, weights):
        out += weight * _shifted(x, round(step * direction[0]), round(step * direction[1]))
    return out


def _motion_blur(pixels: Pixels, level: tuple[int, float], rng: np.random.Generator) -> np.ndarray:
    """Motion blur of ``radius`` and ``sigma`` in a random direction within 45 degrees of horizontal."""
    radius, sigma = level
    return _motion(_unit(pixels), radius, sigma, rng.uniform(-45.0, 45.0))


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom float [H, W, C] in by ``factor`` about the centre (bilinear), keeping its size."""
    height, width = x.shape[:2]
    crop_h, crop_w = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    zoomed = ndimage.zoom(x[top : top + crop_h, left : left + crop_w], (factor, factor, 1), order=1)
    trim_top, trim_left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[trim_top : trim_top + height, trim_left : trim_left + width]


def _zoom_blur(pixels: Pixels, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image and its zooms by each of ``factors``."""
    x = _unit(pixels)
    total = x.copy()
    for factor in factors:
        total += _clipped_zoom(x, factor)
    return total / (len(factors) + 1)


# --- weather ---

def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A periodic diamond-square height map, float [size, size] in [0, 1]; ``size`` a power of 2.

    Each halving of the step adds uniform displacements whose amplitude falls by ``decay**2``
    (ImageNet-C's schedule: start 100^2, divided by decay^2 per level)."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = np.arange(0, size, step)
        centres = corners + half
        # Squares: the centre of each cell is the mean of its four corners.
        grid = heights[np.ix_(corners, corners)]
        mean = (grid + np.roll(grid, -1, 0) + np.roll(grid, -1, 1) + np.roll(np.roll(grid, -1, 0), -1, 1)) / 4.0
        heights[np.ix_(centres, centres)] = mean + wibble * rng.uniform(-wibble, wibble, mean.shape)
        # Diamonds: each edge midpoint is the mean of its four neighbours at distance `half`.
        for rows, cols in ((corners, centres), (centres, corners)):
            r, c = np.ix_(rows, cols)
            mean = (heights[r, (c - half) % size] + heights[r, (c + half) % size]
                    + heights[(r - half) % size, c] + heights[(r + half) % size, c]) / 4.0
            heights[r, c] = mean + wibble * rng.uniform(-wibble, wibble, mean.shape)
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


def _fog(pixels: Pixels, level: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Add ``strength`` times a plasma fractal (256 px map, or the next power of two above the
    image), then rescale so the image's maximum stays where it was."""
    strength, decay = level
    x = _unit(pixels)
    height, width = x.shape[:2]
    size = max(256, 1 << (max(height, width) - 1).bit_length())
    peak = x.max()
    x = x + strength * _plasma_fractal(size, decay, rng)[:height, :width, None]
    return x * peak / (peak + strength)


def _snow(pixels: Pixels, level: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Zoomed Gaussian flakes, thresholded and motion-blurred (and again rotated by 180 degrees)
    over an image whitened towards 1.5 x grey + 0.5."""
    loc, scale, zoom, threshold, radius, sigma, blend = level
    x = _unit(pixels)
    flakes = _clipped_zoom(rng.normal(loc=loc, scale=scale, size=(*x.shape[:2], 1)), zoom)
    flakes[flakes < threshold] = 0.0
    flakes = np.floor(np.clip(flakes, 0.0, 1.0) * 255.0) / 255.0
    flakes = _motion(flakes, radius, sigma, rng.uniform(-135.0, -45.0))
    grey = x @ np.array([0.299, 0.587, 0.114])
    x = blend * x + (1.0 - blend) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return x + flakes + np.rot90(flakes, k=2)


# --- digital ---

def _brightness(pixels: Pixels, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``shift`` to the HSV value (the largest channel, clipped to 1), keeping hue and saturation.

    With hue and saturation fixed, RGB is proportional to the value, so the channels scale by
    new value / old value; a black pixel (value 0, no hue) becomes grey.
    """
    x = _unit(pixels)
    value = x.max(axis=2, keepdims=True)
    new_value = np.minimum(value + shift, 1.0)
    scale = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * scale, new_value)


def _contrast(pixels: Pixels, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Scale each channel's deviation from its mean by ``factor``."""
    x = _unit(pixels)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * factor + mean


def _elastic_transform(pixels: Pixels, level: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (three reference points moved by up to ``shift`` pixels), then a
    smooth displacement field: uniform noise blurred by ``sigma``, scaled by ``alpha``."""
    alpha, sigma, shift = level
    x = _unit(pixels)
    height, width = x.shape[:2]
    centre, reach = np.array([width // 2, height // 2], dtype=np.float64), min(height, width) // 3
    before = np.array([centre + reach, [centre[0] + reach, centre[1] - reach], centre - reach])
    after = before + rng.uniform(-shift, shift, size=before.shape)
    # The affine map of `after` back to `before`, in (row, col) order: where each output pixel reads.
    inverse = np.linalg.solve(np.column_stack([after, np.ones(3)]), before).T  # rows: x, y
    matrix = inverse[::-1, :2][:, ::-1]
    offset = inverse[::-1, 2]
    warped = np.stack([ndimage.affine_transform(x[..., c], matrix, offset, order=1, mode="mirror")
                       for c in range(x.shape[2])], axis=-1)
    dx, dy = (ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=(height, width)), sigma, mode="reflect",
                                      truncate=3.0) * alpha for _ in range(2))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    coordinates = np.array([rows + dy, cols + dx])
    return np.stack([ndimage.map_coordinates(warped[..., c], coordinates, order=1, mode="reflect")
                     for c in range(x.shape[2])], axis=-1)


def _pixelate(pixels: Pixels, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample to ``factor`` of the size, then box-upsample back."""
    image = Image.fromarray(pixels)
    width, height = image.size
    small = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.Resampling.BOX)
    return _unit(np.asarray(small.resize((width, height), Image.Resampling.BOX)))


def _jpeg_compression(pixels: Pixels, quality: int, rng: np.random.Generator) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return _unit(np.asarray(decoded.convert("RGB")))


#: name -> (function, parameter for severities 1..5), in ImageNet-C's order.
_CORRUPTIONS: dict[str, tuple[Corruption, tuple[Any, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    "shot_noise": (_shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": (_impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27)),
    "defocus_blur": (_defocus_blur, ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))),
    "glass_blur": (_glass_blur, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    "motion_blur": (_motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    "zoom_blur": (_zoom_blur, (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                               np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))),
    "snow": (_snow, ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                     (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                     (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))),
    "fog": (_fog, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))),
    "brightness": (_brightness, (0.1, 0.2, 0.3, 0.4, 0.5)),
    "contrast": (_contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
    # (alpha, sigma, affine shift); published as multiples of 244 (where 224 was meant, by its own comment).
    "elastic_transform": (_elastic_transform, ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                                               (244 * 0.05, 244 * 0.01, 244 * 0.02),
                                               (244 * 0.07, 244 * 0.01, 244 * 0.02),
                                               (244 * 0.12, 244 * 0.01, 244 * 0.02))),
    "pixelate": (_pixelate, (0.6, 0.5, 0.4, 0.3, 0.25)),
    "jpeg_compression": (_jpeg_compression, (25, 18, 15, 10, 7)),
}

#: The corruptions :func:`corrupt` applies (ImageNet-C's 15 less ``frost``).
CORRUPTIONS = tuple(_CORRUPTIONS)
#: ImageNet-C's 15 corruptions, as its folders are named (all readable from disk).
IMAGENET_C_CORRUPTIONS = (*CORRUPTIONS, "frost")
