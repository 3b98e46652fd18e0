"""ImageNet-C's corruptions, applied on the fly with a per-sample random generator.

The parameters per severity (1-5) are the published ones of ImageNet-C's generator
(hendrycks/robustness, ``make_imagenet_c.py``, the 224 x 224 version, with its four extra
corruptions ``speckle_noise``, ``gaussian_blur``, ``spatter`` and ``saturate``); the implementations
are our own, on numpy, scipy and Pillow. All 19 are here; ``frost`` blends in the generator's own
photographs of frost, read from a directory the user points at (:class:`FrostImages`).

Checked against the generator with identical random draws:

* ``motion_blur`` and ``snow`` (which motion-blurs its snow layer) follow ImageMagick's motion blur:
  each output pixel is the Gaussian-weighted mean of the input at offsets 0..2*radius along the
  blur direction, rounded as ImageMagick rounds them, so a bright point streaks towards the
  opposite side (-direction). ImageMagick rounds its 8-bit result; ours stays in floating point
  until the final truncation.
* ``glass_blur``: the generator's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views copies
  ``x[h', w']`` into ``x[h, w]`` and leaves ``x[h', w']`` as it was (no swap); so does ours.
* The generator saved every corrupted image as JPEG at quality 85: :func:`corrupt` does the same
  round trip when given ``jpeg_quality=85`` (the ``corrupted`` reader's default).
* Random draws come from a ``numpy.random.Generator``, not the global generator, so the images
  match ImageNet-C's in distribution, not pixel for pixel.
* ``spatter``'s water (severities 1-3) used OpenCV's Canny edges, distance transform and histogram
  equalisation; ours are written out on numpy and scipy (exact Euclidean distances, where OpenCV
  approximates them with a 5 x 5 mask): the same kind of droplets, not the same pixels. Where no
  droplet survives the threshold the image is left as it is (the generator divides 0 by 0).
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.signal import fftconvolve

from rationality.errors import ConfigError

#: Severities of a corruption; 0 means none (the clean image).
SEVERITIES = (1, 2, 3, 4, 5)
#: The JPEG quality at which ImageNet-C's generator saved every corrupted image.
IMAGENET_C_JPEG_QUALITY = 85

Pixels = np.ndarray  # uint8 [H, W, 3]
Corruption = Callable[[Pixels, Any, np.random.Generator], np.ndarray]


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """The generator that corrupts ``sample_id``: keyed by ``seed`` and the CRC-32 of the id.

    The key does not depend on the corruption or severity, so the severities of one corruption
    share their random draws (e.g. one noise pattern, scaled), and curves over severity are smooth.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(sample_id.encode("utf-8")),)))


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator,
            jpeg_quality: int | None = None, frost_images: FrostImages | None = None) -> Image.Image:
    """Apply corruption ``name`` at ``severity`` to an image.

    Args:
        image: any PIL image; converted to RGB.
        name: one of :data:`CORRUPTIONS`.
        severity: 0 (returns the RGB image unchanged) to 5.
        rng: the source of every random draw (see :func:`sample_rng`).
        jpeg_quality: if set, the corrupted image goes through a JPEG round trip at this quality, as
            ImageNet-C's generator saved its files (:data:`IMAGENET_C_JPEG_QUALITY`); not at severity 0.
        frost_images: the generator's frost photographs; needed by ``frost`` only.

    Returns:
        An RGB image of the same size.

    Raises:
        ConfigError: for an unknown corruption or severity, or ``frost`` without ``frost_images``.
    """
    function, levels = _corruption(name)
    check_severity(severity, allow_clean=True)
    if name == "frost":
        if frost_images is None:
            raise ConfigError("corruption frost blends in the photographs of ImageNet-C's generator: give the "
                              "directory that holds frost1.png ... frost5.jpg (option frost_dir)")
        function = partial(function, frost_images=frost_images)
    rgb = image.convert("RGB")
    if severity == 0:
        return rgb
    out = function(np.asarray(rgb), levels[severity - 1], rng)
    corrupted = Image.fromarray((np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8))
    return corrupted if jpeg_quality is None else Image.fromarray(_jpeg_round_trip(np.asarray(corrupted), jpeg_quality))


def check_corruption(name: Any) -> str:
    """``name`` if it is a known corruption; raises ConfigError listing the known ones otherwise."""
    _corruption(name)
    return name


def check_jpeg_quality(quality: Any, source: str) -> int | None:
    """``quality`` if it is None or an int in 1..100; raises ConfigError naming ``source`` otherwise."""
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise ConfigError(f"{source}: jpeg_quality must be an integer in 1..100 or null, got {quality!r}")
    return quality


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


def _speckle_noise(pixels: Pixels, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise x + x * N(0, sigma^2), independent per value (black stays black)."""
    x = _unit(pixels)
    return x + x * rng.normal(scale=sigma, size=pixels.shape)


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


def _gaussian_blur(pixels: Pixels, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels (truncated at 4 sigma, nearest-edge borders)."""
    return _spatial_gaussian(_unit(pixels), sigma)


def _glass_shuffle(x: np.ndarray, max_delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's local pixel shuffle of [H, W, C]: ``iterations`` sweeps over the interior pixels,
    bottom-right to top-left, each copying the pixel at a random offset in [-max_delta, max_delta)
    (dx, then dy drawn) into it. The source keeps its value: a copy, not a swap (see the module
    docstring)."""
    height, width = x.shape[:2]
    rows = range(height - max_delta, max_delta, -1)
    cols = range(width - max_delta, max_delta, -1)
    # Copying pixels in place equals copying entries of the index map `source`
    # (pixel p now holds the pixel originally at source[p]); Python ints keep the loop fast.
    source = list(range(height * width))
    for _ in range(iterations):
        shifts = rng.integers(-max_delta, max_delta, size=(len(rows) * len(cols), 2)).tolist()
        step = 0
        for h in rows:
            for w in cols:
                dx, dy = shifts[step]
                step += 1
                source[h * width + w] = source[(h + dy) * width + (w + dx)]
    return x.reshape(height * width, -1)[np.asarray(source)].reshape(x.shape)


def _glass_blur(pixels: Pixels, level: tuple[float, int, int], rng: np.random.Generator) -> np.ndarray:
    """Blur (to uint8), :func:`_glass_shuffle`, then blur again."""
    sigma, max_delta, iterations = level
    x = (np.clip(_spatial_gaussian(_unit(pixels), sigma), 0.0, 1.0) * 255.0).astype(np.uint8)
    shuffled = _glass_shuffle(x, max_delta, iterations, rng)
    return _spatial_gaussian(shuffled.astype(np.float64) / 255.0, sigma)


def _offset_pixels(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``out[y, x] = x[y + dy, x + dx]`` for [H, W, ...], edge pixels repeated beyond the border."""
    height, width = x.shape[:2]
    rows = np.clip(np.arange(height) + dy, 0, height - 1)
    cols = np.clip(np.arange(width) + dx, 0, width - 1)
    return x[rows][:, cols]


def _motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur of float [H, W, ...]: out(p) = sum_i w_i x(p + o_i), i = 0..2*radius,
    w_i proportional to exp(-i^2 / (2 sigma^2)), o_i = i * (cos, sin)(angle) rounded half down
    (``ceil(v - 0.5)``), x to the right and y down. A bright point streaks along -(cos, sin)."""
    steps = np.arange(2 * radius + 1)
    weights = np.exp(-steps**2 / (2.0 * sigma**2))
    weights /= weights.sum()
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    out = np.zeros_like(x, dtype=np.float64)
    for step, weight in zip(steps, weights):
        out += weight * _offset_pixels(x, math.ceil(step * cos - 0.5), math.ceil(step * sin - 0.5))
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


class FrostImages:
    """The frost photographs of ImageNet-C's generator (``frost1.png`` ... ``frost5.jpg`` of its
    ``create_c`` folder; it draws among the first five), read from ``directory``.

    Raises:
        ConfigError: naming the directory and the missing files.
    """

    FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        missing = [name for name in self.FILES if not (self.directory / name).is_file()]
        if missing:
            raise ConfigError(f"{self.directory}: frost needs the frost photographs of ImageNet-C's generator "
                              f"(hendrycks/robustness, ImageNet-C/create_c/); missing: {', '.join(missing)}")

        self._loaded: dict[int, np.ndarray] = {}

    def load(self, index: int) -> np.ndarray:
        """Photograph ``index`` (0-4) as uint8 RGB [H, W, 3], read once."""
        if index not in self._loaded:
            with Image.open(self.directory / self.FILES[index]) as image:
                self._loaded[index] = np.asarray(image.convert("RGB"))
        return self._loaded[index]


def _frost(pixels: Pixels, level: tuple[float, float], rng: np.random.Generator,
           frost_images: FrostImages) -> np.ndarray:
    """``weight * x + frost_weight * frost``, frost a random crop of a random one of the five
    photographs (index, then top row, then left column drawn). A photograph smaller than the image
    is first enlarged by the smallest integer factor that fits (bilinear; the generator's images
    were 224 x 224 and never needed it)."""
    weight, frost_weight = level
    height, width = pixels.shape[:2]
    frost = frost_images.load(int(rng.integers(len(FrostImages.FILES))))
    factor = max(1, math.ceil(height / frost.shape[0]), math.ceil(width / frost.shape[1]))
    if factor > 1:
        frost = np.asarray(Image.fromarray(frost).resize((frost.shape[1] * factor, frost.shape[0] * factor),
                                                         Image.Resampling.BILINEAR))
    top = int(rng.integers(max(1, frost.shape[0] - height)))
    left = int(rng.integers(max(1, frost.shape[1] - width)))
    crop = frost[top : top + height, left : left + width]
    return weight * _unit(pixels) + frost_weight * _unit(crop)


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3 x 3 Sobel derivatives (d/dx, d/dy) of a 2-D array, edge pixels repeated beyond the border."""
    smooth, derive = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    dx = ndimage.correlate1d(ndimage.correlate1d(image, derive, axis=1, mode="nearest"), smooth, axis=0, mode="nearest")
    dy = ndimage.correlate1d(ndimage.correlate1d(image, derive, axis=0, mode="nearest"), smooth, axis=1, mode="nearest")
    return dx, dy


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of a uint8 [H, W] image, bool [H, W]: Sobel gradients, L1 magnitude, non-maximum
    suppression across the gradient direction (quantised to 0, 45, 90, 135 degrees), hysteresis
    (a pixel above ``low`` is an edge if 8-connected to one above ``high``), as OpenCV's ``Canny``."""
    dx, dy = _sobel(image.astype(np.float64))
    magnitude = np.abs(dx) + np.abs(dy)
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape

    def neighbour(row: int, col: int) -> np.ndarray:
        return padded[1 + row : 1 + row + height, 1 + col : 1 + col + width]

    ax, ay = np.abs(dx), np.abs(dy)
    tan_22, tan_67 = math.tan(math.radians(22.5)), math.tan(math.radians(67.5))
    horizontal = ay < tan_22 * ax
    vertical = ay > tan_67 * ax
    rising = dx * dy < 0  # the gradient points up-right or down-left: compare the anti-diagonal
    peak = np.where(horizontal, (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1)),
                    np.where(vertical, (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0)),
                             np.where(rising, (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1)),
                                      (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1)))))
    candidates = peak & (magnitude > low)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3)))
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[candidates & (magnitude > high)])] = True
    strong[0] = False
    return strong[labels]


def _equalize_histogram(image: np.ndarray) -> np.ndarray:
    """OpenCV's ``equalizeHist`` of a uint8 image: levels mapped by their cumulative count, the
    lowest present level to 0 and the highest to 255 (rounded)."""
    counts = np.bincount(image.ravel(), minlength=256)
    first = int(np.flatnonzero(counts)[0])
    if counts[first] == image.size:
        return image.copy()
    lookup = np.rint((np.cumsum(counts) - counts[first]) * (255.0 / (image.size - counts[first])))
    return np.clip(lookup, 0, 255).astype(np.uint8)[image]


def _box3(x: np.ndarray) -> np.ndarray:
    """3 x 3 mean filter, mirrored borders (edge pixel not repeated)."""
    return ndimage.uniform_filter(x.astype(np.float64), size=3, mode="mirror")


def _spatter(pixels: Pixels, level: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Droplets from thresholded blurred noise: pale turquoise water with shaded edges (severities
    1-3), or mud-brown patches that replace the image (4-5)."""
    loc, scale, sigma, threshold, intensity, mud = level
    x = _unit(pixels)
    liquid = ndimage.gaussian_filter(rng.normal(loc=loc, scale=scale, size=pixels.shape[:2]), sigma, mode="nearest")
    liquid[liquid < threshold] = 0.0
    if mud:
        patches = ndimage.gaussian_filter((liquid > threshold).astype(np.float64), intensity, mode="nearest")
        patches[patches < 0.8] = 0.0
        brown = np.array([63.0, 42.0, 20.0]) / 255.0
        return x * (1.0 - patches[..., None]) + brown * patches[..., None]
    edges = _canny(np.clip(liquid * 255.0, 0, 255).astype(np.uint8), 50, 150)
    distance = np.minimum(ndimage.distance_transform_edt(~edges), 20.0) if edges.any() else np.full(edges.shape, 20.0)
    shading = _equalize_histogram(_box3(distance).astype(np.uint8))
    relief = np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    shading = np.clip(np.rint(ndimage.correlate(shading.astype(np.float64), relief, mode="mirror")), 0, 255)
    water = liquid * np.rint(_box3(shading))
    if water.max() <= 0:
        return x
    turquoise = np.array([175.0, 238.0, 238.0]) / 255.0
    return x + (water / water.max() * intensity)[..., None] * turquoise


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


def _saturate(pixels: Pixels, level: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """HSV saturation s -> clip(s * factor + shift, 0, 1), keeping hue and value.

    With hue and value fixed, each channel is v * (1 - s * g) for a g in [0, 1] set by the hue, so
    a channel c becomes v - s' / s * (v - c). A grey pixel (s = 0) has hue 0, red, as in
    scikit-image's conversion the generator used: it becomes (v, v (1 - s'), v (1 - s')).
    """
    factor, shift = level
    x = _unit(pixels)
    value = x.max(axis=2, keepdims=True)
    spread = value - x.min(axis=2, keepdims=True)
    saturation = np.divide(spread, value, out=np.zeros_like(value), where=value > 0)
    new_saturation = np.clip(saturation * factor + shift, 0.0, 1.0)
    scaled = value - np.divide(new_saturation * value * (value - x), spread, out=np.zeros_like(x), where=spread > 0)
    grey_as_red = value * (1.0 - new_saturation * np.array([0.0, 1.0, 1.0]))
    return np.where(spread > 0, scaled, grey_as_red)


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


def _jpeg_round_trip(pixels: Pixels, quality: int) -> Pixels:
    """Encode uint8 [H, W, 3] as JPEG at ``quality`` (Pillow) and decode: uint8 [H, W, 3]."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _jpeg_compression(pixels: Pixels, quality: int, rng: np.random.Generator) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode."""
    return _unit(_jpeg_round_trip(pixels, quality))


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
    "frost": (_frost, ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))),
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
    # The generator's four extra corruptions.
    "speckle_noise": (_speckle_noise, (0.15, 0.2, 0.35, 0.45, 0.6)),
    "gaussian_blur": (_gaussian_blur, (1, 2, 3, 4, 6)),
    # (noise mean, noise sigma, blur sigma, threshold, water intensity or mud blur sigma, mud)
    "spatter": (_spatter, ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                           (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))),
    # (saturation factor, shift)
    "saturate": (_saturate, ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))),
}

#: Every corruption :func:`corrupt` applies: ImageNet-C's 15 and its generator's 4 extra ones.
CORRUPTIONS = tuple(_CORRUPTIONS)
#: ImageNet-C's 15 benchmark corruptions, in its order (its folder names).
IMAGENET_C_CORRUPTIONS = CORRUPTIONS[:15]
#: The generator's extra corruptions, released as ImageNet-C's extra folders.
EXTRA_CORRUPTIONS = CORRUPTIONS[15:]
