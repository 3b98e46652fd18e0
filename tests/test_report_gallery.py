"""Heatmap galleries and `rationality show`: which samples, and that images, heatmaps and masks come from the stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from report_stores import scores_store

from rationality import schema
from rationality.report.tables import metric_view
from rationality.cli import main
from rationality.data import create_dataset
from rationality.data.geometry import Geometry
from rationality.data.masks import build_mask_store
from rationality.errors import StoreError
from rationality.report.figures import DPI
from rationality.report.made_with import read_made_with
from rationality.report.gallery import (
    IMAGE_PANEL, gallery_figure, pair_stores, round_robin, select_samples, show_figure,
)
from rationality.report.overlay import display_heatmap, model_input_images, upsample
from rationality.report.tables import START_LAYER_POLICIES
from rationality.scoring.score import ScoringOptions, score_dataset
from rationality.store import write_dataset

# --------------------------------------------------------------------------- selection on hand-made stores

IDS = [f"s{i}" for i in range(8)]
LABELS = [0, 1, 0, 1, 2, 2, 0, 1]
# correct per method; all three right on s0, s1, s3, s4, s6
CORRECT = {"zs": [1, 1, 0, 1, 1, 0, 1, 1], "lp": [1, 1, 1, 1, 1, 0, 1, 0], "ft": [1, 1, 0, 1, 1, 1, 1, 1]}
# RMA per method at the one start layer; at threshold 0.5 the quadrants are
#   zs: RR RW WR RR RR WW RR RR;  lp: RR RW RR RR RR WW RW WW;  ft: RW RW WR RR RR RR RR RR
RMA = {"zs": [0.9, 0.1, 0.7, 0.8, 0.6, 0.2, 0.9, 0.9], "lp": [0.9, 0.1, 0.7, 0.8, 0.6, 0.2, 0.3, 0.9],
       "ft": [0.2, 0.1, 0.7, 0.8, 0.6, 0.9, 0.9, 0.9]}
KINDS = {"zs": "zero_shot", "lp": "linear_probe", "ft": "finetune"}


def _hand_made(method: str, order: list[int] | None = None) -> xr.Dataset:
    order = order or list(range(8))
    rma = np.asarray(RMA[method], np.float32)[order].reshape(8, 1, 1)
    return scores_store(rma, np.zeros((8, 1, 1)), np.asarray(CORRECT[method], bool)[order],
                        labels=np.asarray(LABELS)[order], ids=[IDS[i] for i in order], method=method,
                        method_kind=KINDS[method])


def test_round_robin_takes_one_per_class_in_turn() -> None:
    assert round_robin(np.array(["c", "a", "b", "d", "e"]), np.array([1, 1, 0, 0, 1])) == ["b", "a", "d", "c", "e"]
    assert round_robin(np.array([], dtype=str), np.array([], dtype=int)) == []


def test_all_correct_picks_samples_right_under_every_method() -> None:
    stores = [_hand_made(m) for m in ("zs", "lp", "ft")]
    # eligible s0 (class 0), s1 (1), s3 (1), s4 (2), s6 (0): round-robin s0, s1, s4, then s6, s3
    assert select_samples(stores, "all_correct", count=10) == ["s0", "s1", "s4", "s6", "s3"]
    assert select_samples(stores, "all_correct", count=2) == ["s0", "s1"]


def test_changed_picks_samples_whose_quadrant_moved_from_zero_shot() -> None:
    stores = [_hand_made(m) for m in ("lp", "zs", "ft")]  # the zero-shot store is found by its kind, not position
    # vs zs: lp changes s2 (WR->RR), s6 (RR->RW), s7 (RR->WW); ft changes s0 (RR->RW), s5 (WW->RR)
    assert select_samples(stores, "changed", count=10) == ["s0", "s7", "s5", "s2", "s6"]
    assert select_samples(stores, "changed", count=10, threshold=0.95) != select_samples(stores, "changed", count=10)


def test_selection_joins_by_sample_id() -> None:
    shuffled = [_hand_made("zs"), _hand_made("lp", order=[7, 3, 5, 1, 0, 2, 6, 4]), _hand_made("ft", order=[1, 0, 2, 3, 4, 5, 6, 7])]
    assert select_samples(shuffled, "changed", count=10) == ["s0", "s7", "s5", "s2", "s6"]
    assert select_samples(shuffled, "all_correct", count=10) == ["s0", "s1", "s4", "s6", "s3"]


def test_changed_needs_one_zero_shot_store() -> None:
    with pytest.raises(StoreError, match="zero-shot"):
        select_samples([_hand_made("lp"), _hand_made("ft")], "changed")
    with pytest.raises(ValueError, match="selection"):
        select_samples([_hand_made("zs")], "surprising")


def test_selection_refuses_different_samples() -> None:
    other = scores_store(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), [True, True], ids=["x", "y"], method="ft")
    with pytest.raises(StoreError, match="different samples"):
        select_samples([_hand_made("zs"), other], "all_correct")


# --------------------------------------------------------------------------- rendering from a real dataset

GEOMETRY = Geometry(resize=32, crop=32)
GRID = (4, 4)


def _cache(spec: dict, method: str, kind: str, seed: int, root: str | None = None) -> xr.Dataset:
    reader = create_dataset(spec["reader"], spec["root"])
    samples = reader.samples("test")
    rng = np.random.default_rng(seed)
    n, classes = len(samples), len(reader.class_names)
    labels = np.array([s.label for s in samples], np.int32)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    logits[np.arange(n), labels] += np.where(rng.random(n) < 0.7, 5.0, -5.0)  # ~70% correct
    dataset = {**spec, "root": root or spec["root"]}
    return schema.cache_dataset(
        ids=[s.id for s in samples], class_names=reader.class_names, explainers=["generic_attention", "grad"],
        start_layers=range(3), grid=GRID, logits=logits, labels=labels,
        heatmaps=rng.random((n, 2, 3, *GRID)).astype(np.float32),
        attrs=schema.provenance(
            schema.StoreKind.CACHE, model="tiny", dataset=spec["name"], split="test", method=method, method_kind=kind,
            paper_start_layer=2 if kind == "zero_shot" else 0, geometry=GEOMETRY.to_dict(),
            image_normalization="model", checkpoint_sha256="0" * 64, config={"dataset": dataset, "split": "test"},
            corruption=schema.CLEAN, severity=0, seed=None, dataset_root=str(reader.root.resolve()),
            dataset_fingerprint=reader.fingerprint("test")))


@pytest.fixture(scope="module")
def stores(synthetic_spec: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path] | Path]:
    """Written cache and scores stores of three methods on the shared synthetic dataset, and its mask store."""
    work = tmp_path_factory.mktemp("gallery")
    masks = build_mask_store(synthetic_spec, "test", GEOMETRY, work / "masks.zarr")
    mask_ds = schema.open_store(str(masks), schema.StoreKind.MASKS)
    caches, scores = [], []
    for seed, (method, kind) in enumerate((("zs", "zero_shot"), ("lp", "linear_probe"), ("ft", "finetune"))):
        cache = _cache(synthetic_spec, method, kind, seed)
        caches.append(write_dataset(cache, work / f"cache-{method}.zarr"))
        scores.append(write_dataset(score_dataset(cache, mask_ds, ScoringOptions()), work / f"scores-{method}.zarr"))
    unreadable = _cache(synthetic_spec, "zs", "zero_shot", 0, root=str(work / "moved-away"))
    return {"masks": masks, "caches": caches, "scores": scores,
            "unreadable": write_dataset(unreadable, work / "cache-unreadable.zarr")}


def _open(stores: dict) -> tuple[list[tuple[xr.Dataset, xr.Dataset]], xr.Dataset]:
    scores = [schema.open_store(str(p), schema.StoreKind.SCORES) for p in stores["scores"]]
    caches = [schema.open_store(str(p), schema.StoreKind.CACHE) for p in stores["caches"]]
    return pair_stores(scores, caches[::-1]), schema.open_store(str(stores["masks"]), schema.StoreKind.MASKS)


def test_images_come_from_the_reader_through_the_geometry(stores: dict, synthetic_spec: dict) -> None:
    cache = schema.open_store(str(stores["caches"][0]), schema.StoreKind.CACHE)
    reader = create_dataset(synthetic_spec["reader"], synthetic_spec["root"])
    sample = reader.samples("test")[5]
    image = model_input_images(cache, [sample.id])[sample.id]
    np.testing.assert_array_equal(image, np.asarray(GEOMETRY.apply_image(reader.load_image(sample))))
    assert image.shape == (32, 32, 3)
    unreadable = schema.open_store(str(stores["unreadable"]), schema.StoreKind.CACHE)
    assert model_input_images(unreadable, [sample.id]) == {sample.id: None}


def test_gallery_draws_each_methods_heatmap_over_the_image(stores: dict) -> None:
    pairs, masks = _open(stores)
    ids = select_samples([s for s, _ in pairs], "changed", count=3)
    assert len(ids) == 3
    images = model_input_images(pairs[0][1], ids)
    figure = gallery_figure(pairs, masks, ids, images, selection="changed")
    axes = np.asarray(figure.axes).reshape(3, 4)
    for row, sample_id in zip(axes, ids):
        mask = masks[schema.MASK].sel(sample=sample_id).values
        np.testing.assert_array_equal(row[0].get_images()[0].get_array(), images[sample_id])
        assert sample_id in row[0].get_ylabel()
        for ax, (s, cache) in zip(row[1:], pairs):
            layer = int(s.attrs[schema.ATTR_PAPER_START_LAYER])
            heatmap = cache[schema.HEATMAP].sel(sample=sample_id, explainer="generic_attention",
                                                start_layer=layer).values
            drawn = ax.get_images()
            np.testing.assert_array_equal(drawn[0].get_array(), images[sample_id])
            np.testing.assert_allclose(drawn[1].get_array(), display_heatmap(heatmap, mask.shape))
            rma = float(metric_view(s)[schema.SCORE].sel(sample=sample_id, explainer="generic_attention", start_layer=layer))
            assert f"RMA {rma:.2f}" in ax.get_xlabel()
    assert [ax.get_title() for ax in axes[0]] == ["image", "zs (s=2)", "lp (s=0)", "ft (s=0)"]


def test_gallery_cli_writes_a_png_of_fixed_size(stores: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gallery.png"
    args = ["figure", "gallery", "--scores", *map(str, stores["scores"]), "--cache", *map(str, stores["caches"]),
            "--masks", str(stores["masks"]), "--selection", "all_correct", "--samples", "2", "--out", str(out)]
    assert main(args) == 0
    samples = capsys.readouterr().out.splitlines()[0]
    assert samples.startswith("samples: ") and samples.count("test-") == 2
    with Image.open(out) as image:
        assert image.size == (round(4 * IMAGE_PANEL[0] * DPI), round(2 * IMAGE_PANEL[1] * DPI))
    assert read_made_with(out) == {"explainer": "generic_attention", "start_layer_policy": "paper", "threshold": "0.5",
                                   "undefined_policy": "invalid", "normalization": "minmax"}


def test_gallery_of_no_sample_is_a_note(stores: dict) -> None:
    pairs, masks = _open(stores)
    figure = gallery_figure(pairs, masks, [], {}, selection="all_correct")
    assert "no sample" in figure.axes[0].texts[0].get_text()


def test_upsample_is_the_scoring_upsampling() -> None:
    """Upsampling a constant gives the constant; a mask's RMA against its own indicator heatmap is the scoring one."""
    np.testing.assert_allclose(upsample(np.full((4, 4), 2.0), (32, 32)), 2.0)
    assert display_heatmap(np.full((4, 4), 3.0), (8, 8)).max() == 0.0


def test_show_renders_one_sample_across_caches(stores: dict, tmp_path: Path) -> None:
    caches = [schema.open_store(str(p), schema.StoreKind.CACHE) for p in stores["caches"][:2]]
    masks = schema.open_store(str(stores["masks"]), schema.StoreKind.MASKS)
    sample_id = str(caches[0].indexes[schema.SAMPLE][3])
    images = [model_input_images(c, [sample_id])[sample_id] for c in caches]
    figure = show_figure(caches, masks, sample_id, images, explainers=["grad"], policies=["all_blocks", "last_block"])
    axes = np.asarray(figure.axes).reshape(2, 3)
    heatmap = caches[1][schema.HEATMAP].sel(sample=sample_id, explainer="grad", start_layer=2).values
    np.testing.assert_allclose(axes[1, 2].get_images()[1].get_array(), display_heatmap(heatmap, (32, 32)))
    scored = schema.open_store(str(stores["scores"][1]), schema.StoreKind.SCORES)
    rma = float(metric_view(scored)[schema.SCORE].sel(sample=sample_id, explainer="grad", start_layer=2))
    assert f"last_block (s=2) · RMA {rma:.2f}" in axes[1, 2].get_xlabel()  # the scoring stage's RMA
    assert axes[0, 1].get_title().startswith("zs\n")


def test_show_cli_with_and_without_the_image(stores: dict, tmp_path: Path) -> None:
    cache = schema.open_store(str(stores["caches"][0]), schema.StoreKind.CACHE)
    sample_id = str(cache.indexes[schema.SAMPLE][0])
    for name, caches in (("readable", stores["caches"]), ("unreadable", [stores["unreadable"]])):
        out = tmp_path / f"{name}.png"
        assert main(["show", sample_id, "--cache", *map(str, caches), "--masks", str(stores["masks"]),
                     "--out", str(out)]) == 0
        rows = 2 * len(START_LAYER_POLICIES)  # explainers x policies
        with Image.open(out) as image:
            assert image.size == (round((1 + len(caches)) * IMAGE_PANEL[0] * DPI), round(rows * IMAGE_PANEL[1] * DPI))


def test_show_without_the_image_draws_heatmap_and_mask(stores: dict) -> None:
    cache = schema.open_store(str(stores["unreadable"]), schema.StoreKind.CACHE)
    masks = schema.open_store(str(stores["masks"]), schema.StoreKind.MASKS)
    sample_id = str(cache.indexes[schema.SAMPLE][0])
    figure = show_figure([cache], masks, sample_id, [None], policies=["paper"])
    image_ax, heatmap_ax = figure.axes[0], figure.axes[1]
    np.testing.assert_array_equal(image_ax.get_images()[0].get_array(), masks[schema.MASK].sel(sample=sample_id).values)
    assert len(heatmap_ax.get_images()) == 1 and heatmap_ax.get_images()[0].get_alpha() == 1.0


def test_show_of_an_unknown_sample(stores: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", "no-such-sample", "--cache", str(stores["caches"][0]), "--masks", str(stores["masks"]),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "no-such-sample" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["show", "gallery", "ood"])
def test_an_unknown_explainer_is_an_error_not_a_blank_panel(
        command: str, stores: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache = schema.open_store(str(stores["caches"][0]), schema.StoreKind.CACHE)
    out = str(tmp_path / "x.png")
    args = {
        "show": ["show", str(cache.indexes[schema.SAMPLE][0]), "--cache", *map(str, stores["caches"]),
                 "--masks", str(stores["masks"]), "--explainers", "grad", "gradcam", "--out", out],
        "gallery": ["figure", "gallery", "--scores", *map(str, stores["scores"]), "--cache", *map(str, stores["caches"]),
                    "--masks", str(stores["masks"]), "--explainer", "gradcam", "--out", out],
        "ood": ["figure", "ood", *map(str, stores["scores"]), "--explainer", "gradcam", "--out", out],
    }[command]
    assert main(args) == 2
    kind = "cache" if command == "show" else "scores"
    assert (f"the {kind} store of tiny/synth/zs holds no 'gradcam' heatmaps; it holds generic_attention, grad"
            in capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()


def test_show_draws_only_the_explainers_every_cache_holds(stores: dict) -> None:
    caches = [schema.open_store(str(p), schema.StoreKind.CACHE) for p in stores["caches"][:2]]
    masks = schema.open_store(str(stores["masks"]), schema.StoreKind.MASKS)
    sample_id = str(caches[0].indexes[schema.SAMPLE][0])
    only_grad = caches[1].sel(explainer=["grad"])
    figure = show_figure([caches[0], only_grad], masks, sample_id, [None, None], policies=["paper"])
    assert len(figure.axes) == 1 * 3 and "grad" in figure.axes[1].get_xlabel()
    with pytest.raises(StoreError, match="holds no 'generic_attention' heatmaps; it holds grad"):
        show_figure([caches[0], only_grad], masks, sample_id, [None, None], explainers=["generic_attention"])
