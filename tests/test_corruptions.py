"""On-the-fly ImageNet-C corruptions: known properties per corruption, and the corrupted reader."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rationality.data import create_dataset
from rationality.data.corruptions import CORRUPTIONS, corrupt, sample_rng
from rationality.data.geometry import PreCrop
from rationality.errors import ConfigError

#: Corruptions whose published parameters do not order the severities by pixel distortion: snow's
#: severity 2 has sparser flakes than 1 (threshold .5 at zoom 2), elastic_transform's severities 1-2
#: are large affine warps and 3-5 small local ones.
NOT_MONOTONIC = {"snow", "elastic_transform"}


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
def test_output_is_rgb_same_size_deterministic_and_monotonic(name: str) -> None:
    image = _scene((83, 61))
    distortions = []
    for severity in range(1, 6):
        out = corrupt(image, name, severity, sample_rng(7, "ILSVRC2012_val_00000001"))
        assert out.mode == "RGB" and out.size == image.size
        again = corrupt(image, name, severity, sample_rng(7, "ILSVRC2012_val_00000001"))
        assert np.array_equal(np.asarray(out), np.asarray(again))
        distortions.append(np.abs(_signed(out) - _signed(image)).mean())
    assert min(distortions) > 0.5
    if name not in NOT_MONOTONIC:
        assert distortions == sorted(distortions), distortions
    assert corrupt(image, name, 0, sample_rng(0, "x")).tobytes() == image.tobytes()


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


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"])
def test_blurs_keep_flat_images_and_smooth_texture(name: str) -> None:
    flat = _grey(90, size=48)
    assert np.abs(_signed(corrupt(flat, name, 3, sample_rng(0, "f"))) - 90).max() <= 1
    rng = np.random.default_rng(1)
    texture = Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8))
    assert _signed(corrupt(texture, name, 3, sample_rng(0, "t"))).std() < 0.7 * _signed(texture).std()


def test_unknown_corruption_or_severity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'frost'; known: gaussian_noise"):
        corrupt(_grey(0, 8), "frost", 1, sample_rng(0, "x"))
    for severity in (6, -1, 2.0, True):
        with pytest.raises(ConfigError, match=r"severity must be an integer in 0..5"):
            corrupt(_grey(0, 8), "fog", severity, sample_rng(0, "x"))


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
        _corrupted(synthetic_spec, corruption="frost")
    with pytest.raises(ConfigError, match="seed: -1 is less than the minimum of 0"):
        _corrupted(synthetic_spec, seed=-1)
    with pytest.raises(ConfigError, match="severities: unknown key"):
        _corrupted(synthetic_spec, severities=[1])
    with pytest.raises(ConfigError, match="pre_crop is set both"):
        _corrupted(synthetic_spec, pre_crop=[40, 32], base={"reader": "imagenet", "options": {"pre_crop": [256, 224]}})
