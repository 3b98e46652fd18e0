"""``rationality evaluate``: the config it writes and checks, and (slow) the whole run through the workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from fixture_trees import FixtureInfo
from fixture_trees_own_data import make_coco_tree, make_folder_tree
from rationality.cli import main
from rationality.errors import ConfigError
from rationality.evaluate import Evaluation, build_config, snakemake_command, write_config
from rationality.models import create_adapter

TINY = "rationality-tiny-vit"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    return make_folder_tree(tmp_path_factory.mktemp("folder") / "my_data", images_per_class=2)


@pytest.fixture(scope="module")
def whole_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned stand-in: the whole state dict of the tiny model with other (seed 1) weights."""
    path = tmp_path_factory.mktemp("weights") / "my-finetune.pt"
    torch.save(create_adapter({"adapter": "open_clip", "name": TINY, "seed": 1}).whole_model().state_dict(), path)
    return path


def _evaluation(folder: FixtureInfo, tmp_path: Path, **changes) -> Evaluation:
    fields = {"model": TINY, "adapter": "open_clip", "pretrained": None, "data": folder.root, "reader": "folder",
              "split": "test", "out": tmp_path / "run", "method": {}, **changes}
    return Evaluation(**fields)


def test_the_config_stands_alone(folder: FixtureInfo, whole_model: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(whole_model.parent)
    evaluation = _evaluation(folder, tmp_path, method={"weights": whole_model.name, "prompt_template": "a {}"},
                             settings={"threshold": 0.6, "infer": {"device": "cpu"}})
    config = build_config(evaluation)
    assert config["runs"] == {"models": [TINY], "datasets": ["my_data"], "methods": ["zs", "my-finetune"]}
    assert config["models"][TINY] == {"adapter": "open_clip", "name": TINY, "pretrained": None, "options": {},
                                      "input_size": 64, "patch_size": 8}  # read from the model
    assert config["methods"] == {"zs": {"kind": "zero_shot", "prompt_template": "a {}"},
                                 "my-finetune": {"kind": "external", "weights": str(whole_model),
                                                 "prompt_template": "a {}"}}  # paths made absolute
    assert config["datasets"]["my_data"] == {"reader": "folder", "root": str(folder.root), "test_split": "test",
                                             "options": {}}
    assert config["threshold"] == 0.6 and config["infer"] == {"device": "cpu"}
    path = write_config(config, tmp_path / "run", cores=3)
    assert yaml.safe_load(path.read_text()) == config
    command = " ".join(["snakemake", *snakemake_command(tmp_path / "run", 3)[3:]])
    assert f"#   {command}\n" in path.read_text() and command.endswith(f"--configfile {path}")


@pytest.mark.parametrize(("method", "changes", "error"), [
    ({"weights": "w.pt"}, {"split": "val"}, r"has no split 'val' \(splits: test, train\); set --split"),
    ({"weights": "w.pt"}, {"name": "zs"}, r"--name 'zs' is the zero-shot run's"),
    ({"weights": "absent.pt"}, {}, r"absent.pt: weights file does not exist"),
    ({"head": "head.pt", "head_classes": "absent.txt"}, {}, r"absent.txt: head_classes file does not exist"),
    ({"head": "head.pt"}, {}, r"head.pt: the head has 2 rows \(classes\) but the dataset has 3 classes"),
    ({}, {}, "set weights .*, head .*, or both"),
    ({"weights": "w.pt"}, {"settings": {"explainers": ["gradcam"]}}, "explainers"),
])
def test_what_would_fail_in_a_job_fails_first(method: dict, changes: dict, error: str, folder: FixtureInfo,
                                              whole_model: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").symlink_to(whole_model)
    torch.save({"weight": torch.zeros(2, 32), "bias": torch.zeros(2)}, tmp_path / "head.pt")
    with pytest.raises(ConfigError, match=error):
        build_config(_evaluation(folder, tmp_path, method=method, **changes))
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_split_without_masks_is_refused(folder: FixtureInfo, whole_model: Path, tmp_path: Path) -> None:
    shutil.copytree(folder.root, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "masks" / "train")
    with pytest.raises(ConfigError, match=r"split 'train' has no masks; evaluating needs them"):
        build_config(_evaluation(folder, tmp_path, data=tmp_path / "copy", split="train",
                                 method={"weights": str(whole_model)}))


def test_cli_errors_are_one_line(folder: FixtureInfo, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["evaluate", "--model", TINY, "--pretrained", "none", "--checkpoint", str(tmp_path / "absent.pt"),
                   "--data", str(folder.root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err == f"rationality evaluate: error: {tmp_path / 'absent.pt'}: weights file does not exist\n"
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", TINY, "--pretrained", "none", "--data", str(folder.root), "--out", "x",
              "--data-option", "missing_equals"])
    assert "expected KEY=VALUE, got 'missing_equals'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", TINY, "--pretrained", "none", "--data", str(folder.root), "--out", "x",
              "--threshold", "nan"])
    assert "argument --threshold: must be a finite number in [0, 1], got 'nan'" in capsys.readouterr().err


# --------------------------------------------------------------------------- the whole run (slow)


@pytest.mark.slow
def test_evaluate_runs_the_workflow_and_can_be_continued(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An image tower and a linear head made elsewhere, on a COCO-format dataset: the table printed is the
    workflow's, the config continues in Snakemake, and a changed head file re-runs only its own run."""
    coco = make_coco_tree(tmp_path / "shop", images_per_class=3)
    model = create_adapter({"adapter": "open_clip", "name": TINY, "seed": 1})
    save_file(model.image_tower().state_dict(), tmp_path / "tower.safetensors")
    torch.manual_seed(0)
    order = [2, 0, 1]
    torch.save({"fc.weight": torch.randn(3, 32), "fc.bias": torch.randn(3)}, tmp_path / "head.pt")
    (tmp_path / "classes.txt").write_text("".join(f"{coco.class_names[i]}\n" for i in order))
    monkeypatch.chdir(tmp_path)
    split_files = json.dumps(coco.options["split_files"])
    status = main(["evaluate", "--model", TINY, "--pretrained", "none", "--checkpoint", "tower.safetensors",
                   "--checkpoint-of", "image_tower", "--head", "head.pt", "--head-prefix", "fc.",
                   "--head-classes", "classes.txt", "--name", "shop-ft", "--data", "shop", "--reader", "coco",
                   "--data-option", "annotations=annotations.json", "--data-option", "images=images",
                   "--data-option", f"split_files={split_files}", "--explainers", "generic_attention",
                   "--out", "run", "--cores", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    table = pd.read_csv(tmp_path / "run" / "results" / "tables" / "pt_ir.csv")
    assert set(table.method) == {"zs", "shop-ft"} and (table.n == 6).all()  # 3 classes x 2 test images
    printed = out.split("wrote ", 2)[-1]
    shown = table[table.metric == "rma"]  # the primary metric's rows; every metric's are in the table
    for method, policy, pt in shown[["method", "start_layer_policy", "pt"]].itertuples(index=False):
        assert re.search(rf"\b{method}\s+generic_attention\s+{policy}\s+\d+\s+[\d.]+\s+({pt:.4f}|NaN)", printed)
    assert table[table.method == "shop-ft"].start_layer[table.start_layer_policy == "paper"].tolist() == [0]  # a head

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def planned(*extra: str) -> dict[str, int]:
        result = subprocess.run(snakemake_command(tmp_path / "run", 2, "-n", *extra), capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        if "Nothing to be done" in output:
            return {}
        counts = re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:", 1)[1].split("\n\n", 1)[0], re.MULTILINE)
        return {rule: int(count) for rule, count in counts if rule != "total"}

    assert planned() == {}
    rethreshold = planned("--config", "threshold=0.6")  # tables and the figures that show it, no model
    assert rethreshold["pt_ir_table"] == 1 and not {"train", "infer", "score", "masks"} & set(rethreshold)
    # A head fine-tuned anew (new content: Snakemake compares checksums, not only times) re-runs its own run only.
    torch.save({"fc.weight": torch.randn(3, 32), "fc.bias": torch.randn(3)}, tmp_path / "head.pt")
    jobs = planned()
    assert (jobs["train"], jobs["infer"], jobs["score"]) == (1, 1, 1) and "masks" not in jobs
