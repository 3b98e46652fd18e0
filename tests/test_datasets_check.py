"""``rationality datasets check`` on the synthetic and ImageNet fixtures, healthy and broken."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from rationality.cli import main
from rationality.data import create_dataset
from rationality.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from tests.conftest import SYNTHETIC_COUNTS, TINY_MODEL
from tests.fixture_trees import make_cub_tree, mark_all_train
from tests.fixture_trees_imagenet import CLASS_NAMES, planted_images, write_imagenet_c, write_imagenet_val


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    write_imagenet_val(root)
    return root


def _config(path: Path, datasets: dict[str, Any]) -> str:
    config = {"datasets": datasets, "models": {"tiny": TINY_MODEL}, "methods": {"zs": {"kind": "zero_shot"}},
              "runs": {"models": ["tiny"], "datasets": list(datasets), "methods": ["zs"]}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _imagenet(root: Path, **options: Any) -> dict[str, Any]:
    return {"reader": "imagenet", "root": str(root), "test_split": "val", "options": {"expect_classes": 5, **options}}


def _section(output: str, name: str) -> str:
    """The lines of one dataset's (or out-of-distribution set's) report."""
    match = re.search(rf"^{name}: .*?(?=^\S|\Z)", output, flags=re.M | re.S)
    assert match, output
    return match.group(0)


def _summary(fractions: list[float]) -> str:
    return (f"mask area fraction min {min(fractions):.4f}, median {np.median(fractions):.4f}, "
            f"max {max(fractions):.4f}; empty masks 0 of {len(fractions)}")


def test_check_reports_counts_names_and_mask_areas(tmp_path: Path, synthetic_root: Path, imagenet_root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path / "config.yaml", {
        "synth": {"reader": "synthetic", "root": str(synthetic_root)}, "imnet": _imagenet(imagenet_root)})
    assert main(["datasets", "check", config, "--images"]) == 0
    output = capsys.readouterr().out
    assert output.rstrip().endswith("checked 2 datasets: all OK")

    synth = _section(output, "synth")
    train, test = SYNTHETIC_COUNTS["train"], SYNTHETIC_COUNTS["test"]
    assert f"4 classes; images per split: train {4 * train}, test {4 * test}" in synth
    for name in SYNTHETIC_CLASSES:
        assert re.search(rf"^ +{name} +{train} +{test}$", synth, flags=re.M), synth
    for split in ("train", "test"):
        fractions = [float(np.mean(np.asarray(Image.open(path)) >= 128))
                     for path in sorted((synthetic_root / "masks").glob(f"{split}-*.png"))]
        assert f"{split}: {_summary(fractions)}" in synth
    assert synth.rstrip().endswith("OK")

    imnet = _section(output, "imnet")
    assert "5 classes; images per split: val 10" in imnet
    for name in CLASS_NAMES:
        assert re.search(rf"^ +{re.escape(name)} +2$", imnet, flags=re.M), imnet
    planted = [image.area / (image.size[0] * image.size[1]) for image in planted_images()]
    assert f"val: {_summary(planted)}" in imnet


def test_check_reports_every_broken_dataset(tmp_path: Path, synthetic_root: Path, imagenet_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    first, second, third = planted_images()[:3]
    xml = imagenet_root / "val_annotations" / f"{first.id}.xml"
    xml.write_text(xml.read_text().replace(f"<xmax>{first.boxes[0][2]}</xmax>", "<xmax>500</xmax>"))
    (imagenet_root / "val_annotations" / f"{second.id}.xml").unlink()
    jpeg = imagenet_root / "val" / third.wnid / f"{third.id}.JPEG"
    jpeg.write_bytes(jpeg.read_bytes()[:-300])  # header intact: its mask loads, its pixels do not
    config = _config(tmp_path / "config.yaml", {
        "gone": {"reader": "synthetic", "root": str(tmp_path / "nowhere")},
        "imnet": _imagenet(imagenet_root, missing_annotation="skip"),
        "strict": _imagenet(imagenet_root),
        "synth": {"reader": "synthetic", "root": str(synthetic_root)},
    })
    assert main(["datasets", "check", config]) == 1
    output = capsys.readouterr().out
    assert output.rstrip().endswith("checked 4 datasets: problems in gone, imnet, strict")
    assert "nowhere: dataset directory does not exist" in _section(output, "gone")

    imnet = _section(output, "imnet")
    assert "5 classes; images per split: val 9" in imnet
    assert f"skipped 1 images (missing_annotation: skip):\n    {second.id}: no annotation in " in imnet
    assert "PROBLEMS (1):" in imnet and f"val/{first.id}: " in imnet and "beyond its 67x45 image" in imnet
    assert f"1 ({second.id}) images have no annotation" in _section(output, "strict")
    assert _section(output, "synth").rstrip().endswith("OK")

    assert main(["datasets", "check", config, "--images"]) == 1
    imnet = _section(capsys.readouterr().out, "imnet")
    assert "PROBLEMS (2):" in imnet and f"val/{third.id}: " in imnet and "truncated" in imnet


def test_check_of_an_invalid_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\n")
    assert main(["datasets", "check", str(bad)]) == 2
    assert "rationality datasets: error:" in capsys.readouterr().err


def test_configured_splits_must_exist(tmp_path: Path, imagenet_root: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "config.yaml"
    config = yaml.safe_load(_config(path, {"imnet": _imagenet(imagenet_root)}) and path.read_text())
    assert main(["datasets", "check", str(path)]) == 0  # zero-shot only: no training split needed
    config["methods"]["mine"] = {"kind": "external", "weights": "made-elsewhere.pt"}
    config["runs"]["methods"] = ["zs", "mine"]
    path.write_text(yaml.safe_dump(config))
    assert main(["datasets", "check", str(path)]) == 0  # nor for a model fine-tuned elsewhere
    config["methods"]["lp"] = {"kind": "linear_probe"}
    config["runs"]["methods"] = ["zs", "lp"]
    path.write_text(yaml.safe_dump(config))
    assert main(["datasets", "check", str(path)]) == 1
    assert "train_split 'train' is not a split" in capsys.readouterr().out


def test_shots_need_that_many_training_images_per_class(tmp_path: Path, synthetic_root: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "config.yaml"
    config = yaml.safe_load(_config(path, {"synth": {"reader": "synthetic", "root": str(synthetic_root)}})
                            and path.read_text())
    counts = Counter(sample.label for sample in create_dataset("synthetic", synthetic_root).samples("train"))
    fewest = min(counts.values())
    config["methods"]["coop"] = {"kind": "coop", "shots": fewest}
    config["runs"]["methods"] = ["zs", "coop"]
    path.write_text(yaml.safe_dump(config))
    assert main(["datasets", "check", str(path)]) == 0
    config["overrides"] = [{"datasets": ["synth"], "methods": ["coop"], "set": {"shots": fewest + 1}}]
    path.write_text(yaml.safe_dump(config))
    assert main(["datasets", "check", str(path)]) == 1
    short = sum(count < fewest + 1 for count in counts.values())
    assert f"a run trains on shots {fewest + 1} per class; {short} classes have fewer" in capsys.readouterr().out


def test_an_empty_split_a_run_uses_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    info = make_cub_tree(tmp_path / "cub", classes=2, images_per_class=2)
    mark_all_train(info.root)
    config = _config(tmp_path / "config.yaml", {"cub": {"reader": "cub", "root": str(info.root),
                                                         "options": info.options, "test_split": "test"}})
    assert main(["datasets", "check", config]) == 1
    output = capsys.readouterr().out
    assert "images per split: train 4, test 0" in output
    assert f"test_split 'test' of {info.root} has no images" in output
    assert output.rstrip().endswith("checked 1 datasets: problems in cub")


def _ood_config(path: Path, clean: dict[str, Any], ood: dict[str, Any]) -> str:
    _config(path, {"clean": clean})
    config = yaml.safe_load(path.read_text())
    config["ood"] = {"shifted": {"dataset": "clean", **ood}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_on_the_fly_ood_sets_are_checked(tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    config = _ood_config(tmp_path / "config.yaml", {"reader": "synthetic", "root": str(synthetic_root)},
                         {"corruptions": ["fog", "contrast"], "severities": [1, 3]})
    assert main(["datasets", "check", config]) == 0
    output = capsys.readouterr().out
    section = _section(output, "shifted")
    assert "shifted: out-of-distribution set of clean (on_the_fly), 2 corruptions x 2 severities" in section
    test_images = 4 * SYNTHETIC_COUNTS["test"]
    assert f"4 of 4 datasets opened; the clean test split has {test_images} images" in section
    assert section.rstrip().endswith("OK")
    assert output.rstrip().endswith("checked 1 datasets and 1 out-of-distribution sets: all OK")


def test_imagenet_c_folders_are_checked(tmp_path: Path, imagenet_root: Path, capsys: pytest.CaptureFixture) -> None:
    imagenet_c = tmp_path / "imagenet-c"
    write_imagenet_c(imagenet_root, imagenet_c, ("fog",), (1, 2))
    config = _ood_config(tmp_path / "config.yaml", _imagenet(imagenet_root),
                         {"source": "imagenet_c", "root": str(imagenet_c), "corruptions": ["fog"], "severities": [1, 2]})
    assert main(["datasets", "check", config, "--images"]) == 0
    assert "2 of 2 datasets opened; the clean test split has 10 images" in capsys.readouterr().out

    missing = planted_images()[4]
    (imagenet_c / "fog" / "1" / missing.wnid / f"{missing.id}.JPEG").unlink()
    shutil.rmtree(imagenet_c / "fog" / "2")
    config = _ood_config(tmp_path / "config.yaml", _imagenet(imagenet_root),
                         {"source": "imagenet_c", "root": str(imagenet_c), "corruptions": ["fog"],
                          "severities": [1, 2, 3]})
    assert main(["datasets", "check", config]) == 1
    section = _section(capsys.readouterr().out, "shifted")
    assert "0 of 3 datasets opened" in section and "PROBLEMS (3):" in section
    assert f"fog severity 1: {imagenet_c / 'fog' / '1'}: 1 ({missing.id}) val images have no corrupted counterpart" \
        in section
    for severity in (2, 3):
        assert f"fog severity {severity}: {imagenet_c / 'fog' / str(severity)}: no such severity folder" in section
