"""config/paper.yaml with every dataset root on a small fixture tree in the real format.

:func:`write_paper_config` gives the workflow tests a copy of the paper's config whose four datasets,
ImageNet-C set and ALBEF and BLIP checkpoints exist under ``root``, so that ``rationality datasets check`` and
Snakemake dry runs see the paper's full grid without any download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from PIL import Image

from tests.fixture_trees import make_caltech_tree, make_cub_tree, make_stanford_dogs_tree
from tests.fixture_trees_imagenet import WNIDS, write_imagenet_c, write_imagenet_val

REPO = Path(__file__).resolve().parents[1]


def write_paper_config(root: Path) -> dict:
    """Write the fixture trees under ``root`` and ``root/paper.yaml``; returns that config."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    trees = {"cub": make_cub_tree(root / "cub"), "caltech101": make_caltech_tree(root / "caltech"),
             "stanford_dogs": make_stanford_dogs_tree(root / "dogs")}
    for name, info in trees.items():
        config["datasets"][name].update(root=str(info.root), options={**info.options})
    write_imagenet_val(root / "imagenet")
    for wnid in WNIDS:  # the training split: class folders, no boxes
        (root / "imagenet" / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(root / "imagenet" / "train" / wnid / f"{wnid}_1.JPEG")
    config["datasets"]["imagenet"]["root"] = str(root / "imagenet")
    config["datasets"]["imagenet"].setdefault("options", {})["expect_classes"] = len(WNIDS)
    # every file the set reads, so that `datasets check` passes; frost blends in the generator's
    # photographs, which a test does not have: its files are copies of the first corruption's
    ood = config["ood"]["imagenet-c"]
    generated = [corruption for corruption in ood["corruptions"] if corruption != "frost"]
    write_imagenet_c(root / "imagenet", root / "imagenet-c", tuple(generated), tuple(ood["severities"]))
    if "frost" in ood["corruptions"]:
        shutil.copytree(root / "imagenet-c" / generated[0], root / "imagenet-c" / "frost")
    config["ood"]["imagenet-c"]["root"] = str(root / "imagenet-c")
    config["methods"]["tip_adapter_f"]["shots"] = 1  # the fixture trees hold a few images per class
    config["methods"]["coop"]["shots"] = 1
    for model in ("albef", "blip"):  # the released files' presence is all a dry run needs
        if config["models"][model]["pretrained"] not in (None, "hub"):
            (root / f"{model}.pth").write_bytes(b"")
            config["models"][model]["pretrained"] = str(root / f"{model}.pth")
    (root / "paper.yaml").write_text(yaml.safe_dump(config))
    return config
