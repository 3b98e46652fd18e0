"""On-the-fly ImageNet-C corruptions: known properties per corruption, and the corrupted reader."""

from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rationality.data import create_dataset
from rationality.data.corruptions import (
    CORRUPTIONS, EXTRA_CORRUPTIONS, IMAGENET_C_CORRUPTIONS, FrostImages, _glass_shuffle, _motion, corrupt, sample_rng,
)
from rationality.data.geometry import PreCrop
from rationality.errors import ConfigError

#: Corruptions whose published parameters do not order the severities by pixel distortion: snow's
#: severity 2 has sparser flakes than 1 (threshold .5 at zoom 2), elastic_transform's severities 1-2
#: are large affine warps and 3-5 small local ones, glass_blur's severity 1 sweeps twice at shifts
#: of 1 and severity 2 once at 2, saturate first lowers saturation (1-2) then raises it (3-5),
#: spatter's water (1-3) and mud (4-5) differ in kind, frost's severity 4 lowers the image's weight
#: without raising the frost's.
NOT_MONOTONIC = {"snow", "elastic_transform", "glass_blur", "saturate", "spatter", "frost"}
FROST_SIZES = ((300, 260), (260, 300), (240, 240), (320, 250), (250, 320))


class FixedDraws:
    """A stand-in for ``numpy.random.Generator`` whose draws the test chooses (known answers)."""

    def __init__(self, uniform: float = 0.0, integers: np.ndarray | int = 0, normal: np.ndarray | None = None):
        self._uniform, self._integers, self._normal = uniform, integers, normal

    def uniform(self, low: float, high: float, size=None) -> float:
        return self._uniform

    def integers(self, low, high=None, size=None):
        return np.broadcast_to(self._integers, size).copy() if size is not None else self._integers

    def normal(self, loc=0.0, scale=1.0, size=None) -> np.ndarray:
        return np.broadcast_to(self._normal, size).copy()


@pytest.fixture(scope="module")
def frost_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five frost photographs under the generator's file names (textures of known pixels)."""
    directory = tmp_path_factory.mktemp("frost")
    for index, (name, (width, height)) in enumerate(zip(FrostImages.FILES, FROST_SIZES)):
        pixels = np.random.default_rng(index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    return directory


def _scene(size: tuple[int, int]) -> Image.Image:
    """A gradient with stripes and two shapes: edges and texture for every corruption to act on."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / width, ys / height, 0.5 + 0.3 * np.sin(xs / 5.0)], axis=-1)
    image = Image.fromarray((base * 200 + 20).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 4, height // 4, width // 2, height // 2], fill=(250, 30, 30))
    draw.ellipse([width // 2, height // 3, width - 5, height - 5], fill=(20, 20, 220))
    return image


def _grey(value: int, size: int = 200) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


def _signed(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_output_is_rgb_same_size_deterministic_and_monotonic(name: str, frost_dir: Path) -> None:
    image = _scene((83, 61))
    frost = FrostImages(frost_dir)
    distortions = []
    for severity in range(1, 6):
        out = corrupt(image, name, severity, sample_rng(7, "ILSVRC2012_val_00000001"), frost_images=frost)
        assert out.mode == "RGB" and out.size == image.size
        again = corrupt(image, name, severity, sample_rng(7, "ILSVRC2012_val_00000001"), frost_images=frost)
        assert np.array_equal(np.asarray(out), np.asarray(again))
        distortions.append(np.abs(_signed(out) - _signed(image)).mean())
    assert min(distortions) > 0.5
    if name not in NOT_MONOTONIC:
        assert distortions == sorted(distortions), distortions
    assert corrupt(image, name, 0, sample_rng(0, "x"), frost_images=frost).tobytes() == image.tobytes()


def test_random_corruptions_differ_between_samples_and_seeds() -> None:
    image = _scene((64, 48))
    outputs = [np.asarray(corrupt(image, "gaussian_noise", 3, sample_rng(seed, sample_id)))
               for seed, sample_id in ((0, "a"), (0, "b"), (1, "a"))]
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])


def test_sample_rng_is_stable_across_processes() -> None:
    """Keyed by CRC-32 of the id (never Python's salted hash): this value must never change."""
    assert sample_rng(0, "ILSVRC2012_val_00000001").integers(0, 2**31) == 116036300


@pytest.mark.parametrize(("severity", "sigma"), [(1, 0.08), (2, 0.12), (3, 0.18)])
def test_gaussian_noise_has_zero_mean_and_the_published_sigma(severity: int, sigma: float) -> None:
    noise = (_signed(corrupt(_grey(128), "gaussian_noise", severity, sample_rng(0, "g"))) - 128) / 255
    # Truncation to uint8 (as ImageNet-C) lowers the mean by half a level on average.
    assert abs(noise.mean() + 0.5 / 255) < 0.002
    assert noise.std() == pytest.approx(sigma, rel=0.02)


@pytest.mark.parametrize(("severity", "photons"), [(1, 60), (3, 12), (5, 3)])
def test_shot_noise_is_poisson(severity: int, photons: int) -> None:
    level = 26  # x = 0.1: even at 3 photons, counts that clip at 1 (>= 4 of mean 0.3) are negligible
    x = level / 255
    out = _signed(corrupt(_grey(level), "shot_noise", severity, sample_rng(0, "s"))) / 255
    assert out.var() == pytest.approx(x / photons, rel=0.05)


@pytest.mark.parametrize(("severity", "amount"), [(1, 0.03), (5, 0.27)])
def test_impulse_noise_flips_the_published_fraction_to_black_or_white(severity: int, amount: float) -> None:
    out = np.asarray(corrupt(_grey(128), "impulse_noise", severity, sample_rng(0, "i")))
    changed = out != 128
    assert changed.mean() == pytest.approx(amount, rel=0.05)
    assert set(np.unique(out[changed])) == {0, 255}


@pytest.mark.parametrize(("severity", "shift"), [(1, 0.1), (3, 0.3), (5, 0.5)])
def test_brightness_raises_hsv_value_and_keeps_hue_and_saturation(severity: int, shift: float) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 120, size=(40, 50, 3), dtype=np.uint8)  # value <= 0.47, so no clipping
    out = _signed(corrupt(Image.fromarray(pixels), "brightness", severity, sample_rng(0, "b")))
    value, new_value = pixels.max(axis=2) / 255, out.max(axis=2) / 255
    assert np.allclose(new_value, value + shift, atol=1 / 255)
    # Same hue and saturation: every channel scales by new value / value (up to uint8 truncation).
    assert np.all(np.abs(out - pixels * ((value + shift) / value)[..., None]) <= 1.0)
    black = np.asarray(corrupt(Image.new("RGB", (4, 4)), "brightness", severity, sample_rng(0, "b")))
    assert np.all(black == int(shift * 255))


@pytest.mark.parametrize(("severity", "factor"), [(1, 0.4), (4, 0.1)])
def test_contrast_keeps_channel_means_and_scales_deviations(severity: int, factor: float) -> None:
    image = _scene((90, 70))
    x, out = _signed(image), _signed(corrupt(image, "contrast", severity, sample_rng(0, "c")))
    assert np.allclose(out.mean(axis=(0, 1)), x.mean(axis=(0, 1)), atol=1.0)
    assert np.allclose(out.std(axis=(0, 1)), factor * x.std(axis=(0, 1)), atol=0.6)


@pytest.mark.parametrize(("severity", "quality"), [(1, 25), (5, 7)])
def test_jpeg_compression_is_a_round_trip_at_the_published_quality(severity: int, quality: int) -> None:
    image = _scene((64, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(np.asarray(corrupt(image, "jpeg_compression", severity, sample_rng(0, "j"))), expected)


def test_pixelate_makes_blocks_of_the_published_size() -> None:
    out = np.asarray(corrupt(_scene((224, 224)), "pixelate", 5, sample_rng(0, "p")))  # factor 0.25: 4 px blocks
    blocks = out.reshape(56, 4, 56, 4, 3)
    assert np.all(blocks == blocks[:, :1, :, :1])


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"])
def test_blurs_keep_flat_images_and_smooth_texture(name: str) -> None:
    flat = _grey(90, size=48)
    assert np.abs(_signed(corrupt(flat, name, 3, sample_rng(0, "f"))) - 90).max() <= 1
    rng = np.random.default_rng(1)
    texture = Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8))
    assert _signed(corrupt(texture, name, 3, sample_rng(0, "t"))).std() < 0.7 * _signed(texture).std()


def test_unknown_corruption_or_severity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'hail'; known: gaussian_noise"):
        corrupt(_grey(0, 8), "hail", 1, sample_rng(0, "x"))
    with pytest.raises(ConfigError, match="frost blends in the photographs.*frost_dir"):
        corrupt(_grey(0, 8), "frost", 1, sample_rng(0, "x"))
    for severity in (6, -1, 2.0, True):
        with pytest.raises(ConfigError, match=r"severity must be an integer in 0..5"):
            corrupt(_grey(0, 8), "fog", severity, sample_rng(0, "x"))


def test_the_nineteen_corruptions() -> None:
    assert len(IMAGENET_C_CORRUPTIONS) == 15 and IMAGENET_C_CORRUPTIONS[8] == "frost"
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert CORRUPTIONS == IMAGENET_C_CORRUPTIONS + EXTRA_CORRUPTIONS


def _point(size: int = 41, value: int = 255) -> tuple[Image.Image, int]:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[size // 2, size // 2] = value
    return Image.fromarray(pixels), size // 2


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0])
def test_motion_blur_streaks_to_imagemagicks_side(angle: float) -> None:
    """ImageMagick reads each output pixel from the input at +offset along the angle, so a bright
    point streaks along -offset: at angle 0, to its left."""
    image, centre = _point()
    out = _signed(corrupt(image, "motion_blur", 1, FixedDraws(uniform=angle)))[..., 0]  # radius 10, sigma 3
    weights = np.exp(-np.arange(21) ** 2 / 18.0)
    weights /= weights.sum()
    expected = np.zeros_like(out)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for step, weight in enumerate(weights):
        expected[centre - math.ceil(step * sin - 0.5), centre - math.ceil(step * cos - 0.5)] += weight
    assert np.array_equal(out, np.floor(expected * 255.0))
    if angle == 0.0:
        assert out[centre, :centre + 1].sum() > 200 and out[centre, centre + 1:].sum() == 0


def test_snow_layer_streaks_downward() -> None:
    """Snow blurs its layer at an angle in (-135, -45) degrees: each flake streaks down (+y)."""
    layer = np.zeros((30, 30))
    layer[10, 15] = 1.0
    out = _motion(layer, radius=10, sigma=4.0, angle=-90.0)
    assert out[:10].sum() == 0 and out[10:, 15].sum() == pytest.approx(1.0) and out[10, 15] == out.max()


def test_glass_blur_copies_pixels_and_never_swaps() -> None:
    """Every draw (dx, dy) = (-1, -1): sweeping from the bottom right, each interior pixel takes its
    upper-left neighbour's value before that one is overwritten, so the interior moves by (1, 1)."""
    x = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)
    out = _glass_shuffle(x, max_delta=1, iterations=1, rng=FixedDraws(integers=-1))
    expected = x.copy()
    expected[2:5, 2:5] = x[1:4, 1:4]
    assert np.array_equal(out, expected)


def test_glass_blur_equals_the_generators_tuple_assignment_on_views() -> None:
    """The generator's statement ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` run on numpy views,
    with the same draws: our index-map loop gives the same pixels."""
    x = np.random.default_rng(3).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    max_delta, iterations = 2, 2
    reference, draws = x.copy(), np.random.default_rng(5)
    for _ in range(iterations):
        shifts = draws.integers(-max_delta, max_delta, size=((12 - 2 * max_delta) * (10 - 2 * max_delta), 2))
        step = 0
        for h in range(12 - max_delta, max_delta, -1):
            for w in range(10 - max_delta, max_delta, -1):
                dx, dy = shifts[step]
                step += 1
                reference[h, w], reference[h + dy, w + dx] = reference[h + dy, w + dx], reference[h, w]
    out = _glass_shuffle(x, max_delta, iterations, np.random.default_rng(5))
    assert np.array_equal(out, reference) and not np.array_equal(out, x)


@pytest.mark.parametrize("name", ["gaussian_noise", "fog", "pixelate", "jpeg_compression"])
def test_jpeg_step_is_pils_quality_85_round_trip(name: str) -> None:
    image = _scene((64, 48))
    plain = corrupt(image, name, 3, sample_rng(0, "q"))
    buffer = io.BytesIO()
    plain.save(buffer, format="JPEG", quality=85)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(np.asarray(corrupt(image, name, 3, sample_rng(0, "q"), jpeg_quality=85)), expected)
    assert corrupt(image, name, 0, sample_rng(0, "q"), jpeg_quality=85).tobytes() == image.tobytes()


@pytest.mark.parametrize(("severity", "sigma"), [(1, 0.15), (5, 0.6)])
def test_speckle_noise_is_multiplicative_with_the_published_sigma(severity: int, sigma: float) -> None:
    pixels = np.asarray(_scene((40, 30)))
    draws = sample_rng(0, "s").normal(scale=sigma, size=pixels.shape)  # the same draws as corrupt's
    x = pixels / 255.0
    expected = (np.clip(x + x * draws, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(corrupt(Image.fromarray(pixels), "speckle_noise", severity, sample_rng(0, "s"))),
                          expected)
    black = corrupt(Image.new("RGB", (8, 8)), "speckle_noise", severity, sample_rng(0, "s"))
    assert not np.asarray(black).any()


@pytest.mark.parametrize(("severity", "sigma"), [(1, 1.0), (2, 2.0)])
def test_gaussian_blur_spreads_a_point_as_the_published_gaussian(severity: int, sigma: float) -> None:
    image, centre = _point(value=200)
    out = _signed(corrupt(image, "gaussian_blur", severity, sample_rng(0, "g")))[..., 1]
    half = int(4 * sigma + 0.5)  # truncated at 4 sigma
    taps = np.exp(-np.arange(-half, half + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    expected = np.zeros_like(out)
    expected[centre - half:centre + half + 1, centre - half:centre + half + 1] = np.outer(taps, taps) * 200 / 255
    assert np.array_equal(out, np.floor(expected * 255.0))


@pytest.mark.parametrize(("severity", "factor", "shift"), [(1, 0.3, 0.0), (3, 2.0, 0.0), (5, 20.0, 0.2)])
def test_saturate_scales_hsv_saturation_as_colorsys(severity: int, factor: float, shift: float) -> None:
    pixels = np.random.default_rng(severity).integers(0, 256, size=(12, 14, 3), dtype=np.uint8)
    pixels[0, :4] = [[0, 0, 0], [90, 90, 90], [255, 255, 255], [10, 200, 200]]  # black, greys, a cyan
    out = np.asarray(corrupt(Image.fromarray(pixels), "saturate", severity, sample_rng(0, "s"))).astype(int)
    expected = np.empty_like(out)
    for index in np.ndindex(pixels.shape[:2]):
        hue, saturation, value = colorsys.rgb_to_hsv(*(pixels[index] / 255.0))
        rgb = colorsys.hsv_to_rgb(hue, min(max(saturation * factor + shift, 0.0), 1.0), value)
        expected[index] = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    assert np.abs(out - expected).max() <= 1  # float rounding at the uint8 truncation
    assert np.abs(out - expected).mean() < 0.05


def test_spatter_water_is_pale_turquoise_added_to_the_image() -> None:
    dark = _grey(30, size=96)
    for severity in (1, 2, 3):
        added = _signed(corrupt(dark, "spatter", severity, sample_rng(0, "w"))) - 30
        wet = added[..., 1] > 20  # ratios of larger additions: truncation moves them by < 1/20
        assert 0.005 < wet.mean() < 0.5 and (added >= -1).all()
        assert np.abs(added[wet, 1] - added[wet, 2]).max() <= 1  # green = blue
        assert np.allclose(added[wet, 0] / added[wet, 1], 175 / 238, atol=0.06)  # red : green = 175 : 238


def test_spatter_mud_replaces_the_image_where_the_layer_is_thick() -> None:
    """Noise draws all 1.0 (above the threshold everywhere): the mud mask is 1 and every pixel mud brown."""
    out = np.asarray(corrupt(_scene((32, 24)), "spatter", 4, FixedDraws(normal=np.ones(1))))
    assert np.array_equal(out[0, 0], (np.array([63, 42, 20]) / 255 * 255).astype(np.uint8)) and (out == out[0, 0]).all()
    dry = corrupt(_scene((32, 24)), "spatter", 4, FixedDraws(normal=np.zeros(1)))  # below the threshold
    assert dry.tobytes() == _scene((32, 24)).tobytes()


@pytest.mark.parametrize(("severity", "weight", "frost_weight"), [(1, 1.0, 0.4), (5, 0.6, 0.75)])
def test_frost_blends_a_crop_of_the_drawn_photograph(frost_dir: Path, severity: int, weight: float,
                                                     frost_weight: float) -> None:
    """Draws: photograph 3 (frost4.jpg), then top row 7 and left column 11 of the crop."""
    image = _scene((64, 48))
    draws = FixedDraws()
    values = iter([3, 7, 11])
    draws.integers = lambda *args, **kwargs: next(values)
    out = np.asarray(corrupt(image, "frost", severity, draws, frost_images=FrostImages(frost_dir)))
    with Image.open(frost_dir / "frost4.jpg") as photograph:
        crop = np.asarray(photograph.convert("RGB"))[7:7 + 48, 11:11 + 64]
    expected = (np.clip((weight * np.asarray(image) + frost_weight * crop.astype(np.float64)) / 255, 0, 1) * 255)
    assert np.abs(out.astype(int) - expected.astype(np.uint8)).max() <= 1  # float rounding at truncation


def test_frost_enlarges_a_photograph_smaller_than_the_image(frost_dir: Path) -> None:
    out = corrupt(_scene((400, 330)), "frost", 3, sample_rng(0, "big"), frost_images=FrostImages(frost_dir))
    assert out.size == (400, 330)


def test_frost_directory_without_the_photographs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "frost1.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=f"{tmp_path}: frost needs.*missing: frost2.png, frost3.png, frost4.jpg"):
        FrostImages(tmp_path)


# --- the corrupted reader ---

def _corrupted(spec: dict, **options):
    defaults = {"base": {"reader": "synthetic"}, "corruption": "gaussian_noise", "severity": 3}
    return create_dataset("corrupted", spec["root"], **{**defaults, **options})


def test_corrupted_reader_keeps_ids_labels_and_masks(synthetic_spec: dict) -> None:
    base = create_dataset("synthetic", synthetic_spec["root"])
    reader = _corrupted(synthetic_spec)
    assert reader.class_names == base.class_names and reader.splits == base.splits
    for split in base.splits:
        samples = reader.samples(split)
        assert samples == base.samples(split)
        for sample in samples[:3]:
            assert np.array_equal(reader.load_mask(sample), base.load_mask(sample))
            clean, noisy = base.load_image(sample), reader.load_image(sample)
            assert noisy.size == clean.size and noisy.tobytes() != clean.tobytes()


def test_corrupted_reader_is_deterministic_per_sample_id(synthetic_spec: dict) -> None:
    samples = create_dataset("synthetic", synthetic_spec["root"]).samples("test")
    first, second = _corrupted(synthetic_spec), _corrupted(synthetic_spec)
    forward = [first.load_image(s).tobytes() for s in samples]
    backward = [second.load_image(s).tobytes() for s in reversed(samples)][::-1]
    assert forward == backward
    other_seed = _corrupted(synthetic_spec, seed=1)
    assert other_seed.load_image(samples[0]).tobytes() != forward[0]


def test_corrupted_reader_severity_zero_and_pre_crop(synthetic_spec: dict) -> None:
    base = create_dataset("synthetic", synthetic_spec["root"])
    sample = base.samples("test")[2]  # a portrait image
    clean = _corrupted(synthetic_spec, severity=0)
    assert clean.load_image(sample).tobytes() == base.load_image(sample).tobytes()
    pre = PreCrop(40, 32)
    cropped = _corrupted(synthetic_spec, pre_crop=[40, 32])
    assert np.array_equal(cropped.load_mask(sample), pre.apply_mask(base.load_mask(sample)))
    assert cropped.load_image(sample).size == (32, 32)


def test_corrupted_reader_option_errors(synthetic_spec: dict) -> None:
    with pytest.raises(ConfigError, match="base.root: unknown key; allowed: options, reader"):
        _corrupted(synthetic_spec, base={"reader": "synthetic", "root": "x"})
    with pytest.raises(ConfigError, match="unknown corruption"):
        _corrupted(synthetic_spec, corruption="hail")
    with pytest.raises(ConfigError, match="corruption frost needs option frost_dir"):
        _corrupted(synthetic_spec, corruption="frost")
    with pytest.raises(ConfigError, match="jpeg_quality: 0 is less than the minimum of 1"):
        _corrupted(synthetic_spec, jpeg_quality=0)
    with pytest.raises(ConfigError, match="seed: -1 is less than the minimum of 0"):
        _corrupted(synthetic_spec, seed=-1)
    with pytest.raises(ConfigError, match="severities: unknown key"):
        _corrupted(synthetic_spec, severities=[1])
    with pytest.raises(ConfigError, match="pre_crop is set both"):
        _corrupted(synthetic_spec, pre_crop=[40, 32], base={"reader": "imagenet", "options": {"pre_crop": [256, 224]}})


def test_corrupted_reader_saves_as_jpeg_85_by_default(synthetic_spec: dict) -> None:
    sample = create_dataset("synthetic", synthetic_spec["root"]).samples("test")[0]
    base_image = create_dataset("synthetic", synthetic_spec["root"]).load_image(sample)
    rng = sample_rng(0, sample.id)
    expected = corrupt(base_image, "gaussian_noise", 3, rng, jpeg_quality=85)
    assert _corrupted(synthetic_spec).load_image(sample).tobytes() == expected.tobytes()
    raw = corrupt(base_image, "gaussian_noise", 3, sample_rng(0, sample.id))
    assert _corrupted(synthetic_spec, jpeg_quality=None).load_image(sample).tobytes() == raw.tobytes()
    assert raw.tobytes() != expected.tobytes()


def test_corrupted_reader_frosts_from_the_directory(synthetic_spec: dict, frost_dir: Path) -> None:
    reader = _corrupted(synthetic_spec, corruption="frost", frost_dir=str(frost_dir))
    sample = reader.samples("test")[0]
    expected = corrupt(reader.base.load_image(sample), "frost", 3, sample_rng(0, sample.id), jpeg_quality=85,
                       frost_images=FrostImages(frost_dir))
    assert reader.load_image(sample).tobytes() == expected.tobytes()
