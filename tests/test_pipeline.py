"""The stage functions end to end on a tiny synthetic dataset, and the CLI's one-line errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import rationality
from rationality import schema
from rationality.report.tables import metric_view
from rationality.cli import main
from rationality.config import load_config
from rationality.data import create_dataset
from rationality.data.geometry import Geometry
from rationality.data.loader import ImageDataset
from rationality.data.masks import build_mask_store
from rationality.errors import ConfigError
from rationality.infer import run_inference
from rationality.models.checkpoint import load_checkpoint
from rationality.report.tables import rationality_table
from rationality.scoring.score import ScoringOptions, score_stores
from rationality.train import train_checkpoint
from tests.fixture_trees import make_cub_tree, mark_all_train

EXPLAINERS = ["generic_attention", "attention_gradient"]
GEOMETRY = Geometry(64, 64)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def mask_store(work: Path, synthetic_spec: dict) -> Path:
    return build_mask_store(synthetic_spec, "test", GEOMETRY, work / "masks" / "test-r64c64.zarr")


@pytest.fixture(scope="module")
def checkpoint(work: Path, synthetic_spec: dict, tiny_model_spec: dict) -> Path:
    return train_checkpoint(dict(tiny_model_spec), synthetic_spec, {"kind": "zero_shot"}, "train", work / "zs")


@pytest.fixture(scope="module")
def cache_store(work: Path, synthetic_spec: dict, checkpoint: Path) -> Path:
    return run_inference(checkpoint, synthetic_spec, "test", work / "cache" / "zs.zarr", explainers=EXPLAINERS,
                         batch_size=5, device="cpu", model_name="tiny", method_name="zs")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mask_store(mask_store: Path, synthetic_spec: dict) -> None:
    masks = schema.open_store(str(mask_store), schema.StoreKind.MASKS)
    reader = create_dataset("synthetic", synthetic_spec["root"])
    samples = reader.samples("test")
    assert list(masks[schema.SAMPLE].values) == [s.id for s in samples]
    assert masks[schema.MASK].shape == (12, 64, 64)
    np.testing.assert_array_equal(masks[schema.LABEL].values, [s.label for s in samples])
    for i in (0, 7):
        np.testing.assert_array_equal(masks[schema.MASK].values[i], GEOMETRY.apply_mask(reader.load_mask(samples[i])))
    assert schema.json_attr(masks, schema.ATTR_GEOMETRY) == {"resize": 64, "crop": 64}


def test_cache_store(cache_store: Path, checkpoint: Path, synthetic_spec: dict) -> None:
    cache = schema.open_store(str(cache_store), schema.StoreKind.CACHE)
    reader = create_dataset("synthetic", synthetic_spec["root"])
    samples = reader.samples("test")
    assert dict(cache.sizes) == {"sample": 12, "class": 4, "explainer": 2, "start_layer": 4, "gy": 8, "gx": 8}
    assert list(cache[schema.SAMPLE].values) == [s.id for s in samples]
    assert all(isinstance(i, str) for i in cache[schema.SAMPLE].values)
    assert list(cache[schema.CLASS].values) == list(reader.class_names)
    assert list(cache[schema.EXPLAINER].values) == EXPLAINERS
    np.testing.assert_array_equal(cache[schema.START_LAYER].values, [0, 1, 2, 3])
    np.testing.assert_array_equal(cache[schema.GRID_Y].values, np.arange(8))
    np.testing.assert_array_equal(cache[schema.LABEL].values, [s.label for s in samples])

    attrs = cache.attrs
    assert attrs[schema.ATTR_PACKAGE_VERSION] == rationality.__version__
    assert attrs[schema.ATTR_CHECKPOINT_SHA256] == _sha256(checkpoint)
    assert (attrs[schema.ATTR_MODEL], attrs[schema.ATTR_METHOD], attrs[schema.ATTR_METHOD_KIND]) == ("tiny", "zs", "zero_shot")
    assert (attrs[schema.ATTR_DATASET], attrs[schema.ATTR_SPLIT]) == ("synth", "test")
    assert attrs[schema.ATTR_PAPER_START_LAYER] == 3  # prompt-based: the last block
    assert schema.json_attr(cache, schema.ATTR_GEOMETRY) == {"resize": 64, "crop": 64}
    config = schema.json_attr(cache, schema.ATTR_CONFIG)
    assert config["explainers"] == EXPLAINERS and config["precision"] == "fp32" and config["split"] == "test"
    assert config["model"]["name"] == "rationality-tiny-vit" and config["method"]["kind"] == "zero_shot"
    assert config["dataset"] == synthetic_spec

    # Logits are the checkpoint's classifier on the test images.
    classifier, _ = load_checkpoint(checkpoint)
    images = ImageDataset(reader, samples, classifier.adapter.geometry, *classifier.adapter.normalization)
    with torch.no_grad():
        logits = classifier(torch.stack([images[i][0] for i in range(len(images))]))
    np.testing.assert_allclose(cache[schema.LOGITS].values, logits.numpy(), atol=1e-5, rtol=0)
    heatmaps = cache[schema.HEATMAP].values
    assert np.isfinite(heatmaps).all() and (heatmaps >= 0).all() and heatmaps.max() > 0


def test_batch_size_does_not_change_heatmaps(cache_store: Path, work: Path, synthetic_spec: dict,
                                             checkpoint: Path) -> None:
    other = run_inference(checkpoint, synthetic_spec, "test", work / "cache" / "zs-b12.zarr", explainers=EXPLAINERS,
                          batch_size=12, device="cpu")
    small = xr.open_zarr(cache_store, consolidated=False)
    large = xr.open_zarr(other, consolidated=False)
    assert np.abs(small[schema.HEATMAP].values - large[schema.HEATMAP].values).max() < 1e-5
    assert np.abs(small[schema.LOGITS].values - large[schema.LOGITS].values).max() < 1e-5
    assert large.attrs[schema.ATTR_METHOD] == "zero_shot"  # default name: the method's kind


def test_score_and_table(cache_store: Path, mask_store: Path, work: Path) -> None:
    out = score_stores(cache_store, mask_store, work / "scores" / "zs.zarr", ScoringOptions("minmax"), progress=False)
    scores = schema.open_store(str(out), schema.StoreKind.SCORES)
    cache = schema.open_store(str(cache_store), schema.StoreKind.CACHE)
    assert metric_view(scores)[schema.SCORE].shape == (12, 2, 4)
    assert (metric_view(scores)[schema.EDGE_CASE].values == 0).all()
    rma = metric_view(scores)[schema.SCORE].values
    assert ((rma >= 0) & (rma <= 1)).all()
    np.testing.assert_array_equal(scores[schema.PREDICTION].values, cache[schema.LOGITS].values.argmax(axis=1))
    table = rationality_table([out])
    assert len(table) == 2 * 3
    assert set(table.n) == {12}
    paper = table[table.start_layer_policy == "paper"]
    assert set(paper.start_layer) == {3} and set(paper.method) == {"zs"}
    accuracy = float((scores[schema.CORRECT].values).mean())
    np.testing.assert_allclose(table.accuracy, accuracy)


def test_interrupted_inference_resumes(cache_store: Path, tmp_path: Path, synthetic_spec: dict, checkpoint: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import rationality.infer as infer

    calls: list[int] = []
    real = infer.explain_batch

    def dies_on_second_batch(*args):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "cache.zarr"
    kwargs = dict(explainers=EXPLAINERS, batch_size=5, chunk_size=5, device="cpu", model_name="tiny", method_name="zs")
    monkeypatch.setattr(infer, "explain_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_inference(checkpoint, synthetic_spec, "test", out, **kwargs)
    assert not out.exists() and (tmp_path / "cache.zarr.partial").exists()
    calls.clear()
    monkeypatch.setattr(infer, "explain_batch", lambda *args: (calls.append(len(args[1])), real(*args))[1])
    run_inference(checkpoint, synthetic_spec, "test", out, **kwargs)
    assert calls == [5, 2]  # chunk 0 was kept; chunks 1 and 2 were computed
    resumed = schema.open_store(str(out), schema.StoreKind.CACHE)
    reference = schema.open_store(str(cache_store), schema.StoreKind.CACHE)
    for name in (schema.HEATMAP, schema.LOGITS, schema.LABEL):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values)


# --------------------------------------------------------------------------- CLI errors


def _dataset_args(root: Path | str, split: str = "test") -> list[str]:
    return ["--dataset-name", "synth", "--dataset", json.dumps({"reader": "synthetic", "root": str(root)}),
            "--split", split]


def _fails(argv: list[str], capsys: pytest.CaptureFixture, *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err  # may also hold progress bars
    prefix = f"rationality {argv[0]}: error: "
    assert prefix in err and "Traceback" not in err, err
    message = err[err.index(prefix):].strip()
    assert "\n" not in message  # one line
    for text in expected:
        assert text in message, (text, message)
    return message


@pytest.fixture
def data_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))


def test_cli_corrupt_image(data_copy: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = data_copy / "images" / "test-square-0001.png"
    image.write_bytes(b"not a png at all")
    out = tmp_path / "cache.zarr"
    _fails(["infer", "--checkpoint", str(checkpoint), *_dataset_args(data_copy), "--device", "cpu",
            "--batch-size", "4", "--out", str(out)], capsys, str(image))
    assert not out.exists()


def test_cli_missing_mask(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mask = data_copy / "masks" / "test-cross-0002.png"
    mask.unlink()
    out = tmp_path / "masks.zarr"
    _fails(["masks", *_dataset_args(data_copy), "--geometry", "r64c64", "--out", str(out)], capsys, str(mask))
    assert not out.exists()


def test_cli_score_different_samples(data_copy: Path, cache_store: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    index = data_copy / "samples.csv"
    index.write_text("".join(line for line in index.read_text().splitlines(keepends=True)
                             if not line.startswith("test-disk-0001,")))
    masks = tmp_path / "masks.zarr"
    assert main(["masks", *_dataset_args(data_copy), "--geometry", "r64c64", "--out", str(masks)]) == 0
    capsys.readouterr()
    out = tmp_path / "scores.zarr"
    _fails(["score", "--cache", str(cache_store), "--masks", str(masks), "--out", str(out)], capsys,
           str(cache_store), str(masks), "test-disk-0001")
    assert not out.exists()


def test_cli_score_succeeds(cache_store: Path, mask_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "scores.zarr"
    assert main(["score", "--cache", str(cache_store), "--masks", str(mask_store), "--normalization", "none",
                 "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    table = tmp_path / "table.csv"
    assert main(["table", str(out), "--threshold", "0.3", "--out", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[0].startswith("model,dataset,method")


def test_cli_masks_and_infer_refuse_an_empty_split(tmp_path: Path, tiny_model_spec: dict,
                                                    capsys: pytest.CaptureFixture) -> None:
    info = make_cub_tree(tmp_path / "cub", classes=2, images_per_class=2)
    mark_all_train(info.root)
    checkpoint = train_checkpoint(dict(tiny_model_spec), info.spec("cub"), {"kind": "zero_shot"}, "train",
                                  tmp_path / "zs")
    dataset = ["--dataset-name", "cub", "--dataset", json.dumps({"reader": "cub", "root": str(info.root),
                                                                 "options": info.options}), "--split", "test"]
    empty = f"dataset cub: split 'test' of {info.root} has no samples"
    masks, cache = tmp_path / "masks.zarr", tmp_path / "cache.zarr"
    _fails(["masks", *dataset, "--geometry", "r64c64", "--out", str(masks)], capsys, empty)
    _fails(["infer", "--checkpoint", str(checkpoint), *dataset, "--device", "cpu", "--out", str(cache)], capsys, empty)
    assert not [path.name for path in tmp_path.iterdir() if path.suffix != ".zarr" and ".zarr" in path.name]
    assert not masks.exists() and not cache.exists()


def test_cli_unknown_model(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _fails(["train", "--model", "{adapter: open_clip, name: no-such-vit, input_size: 64, patch_size: 8}",
            "--method", "{kind: zero_shot}", *_dataset_args(synthetic_root, "train"), "--out", str(tmp_path / "ckpt")],
           capsys, "no-such-vit")
    assert not (tmp_path / "ckpt" / "checkpoint.pt").exists()


def test_cli_invalid_spec_key(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["train", "--model", "{adapter: open_clip, name: x, input_size: 64, patch_size: 8, bogus: 1}",
              "--method", "{kind: zero_shot}", *_dataset_args(synthetic_root, "train"), "--out", str(tmp_path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "--model" in err


def test_load_config_unknown_key(tmp_path: Path) -> None:
    config = {
        "datasets": {"synth": {"reader": "synthetic", "root": "data/synth"}},
        "models": {"tiny": {"adapter": "open_clip", "name": "rationality-tiny-vit", "input_size": 64, "patch_size": 8}},
        "methods": {"zs": {"kind": "zero_shot"}},
        "runs": {"models": ["tiny"], "datasets": ["synth"], "methods": ["zs"]},
    }
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config))
    loaded = load_config(good)
    assert loaded["threshold"] == 0.5  # defaults filled
    assert loaded["scoring"] == {"normalization": "minmax", "metrics": ["rma"], "thresholds": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "treshold": 0.4}))
    with pytest.raises(ConfigError, match=re.escape(str(bad))) as caught:
        load_config(bad)
    assert "treshold" in str(caught.value)
