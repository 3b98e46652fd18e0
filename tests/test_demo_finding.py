"""The demo's headline finding: fine-tuning lowers Prediction Trustworthiness against zero-shot, by more
than the bootstrap uncertainty.

The demo of ``config/config.yaml`` (its data, pretraining, methods, threshold and normalisation) for the
two methods the finding compares, through the stage functions the workflow's jobs call. The exact
numbers depend on torch's kernels and threads (see the README); the finding must not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rationality.config import method_spec_for
from rationality.data.geometry import Geometry
from rationality.data.masks import build_mask_store
from rationality.data.synthetic import generate_synthetic_dataset
from rationality.infer import run_inference
from rationality.report.bootstrap import bootstrap_table
from rationality.scoring.score import ScoringOptions, score_stores
from rationality.train import train_checkpoint
from tests.conftest import DEMO_MODEL

pytestmark = pytest.mark.slow

DATASET = "demo"


def test_finetuning_lowers_pt_beyond_the_bootstrap_intervals(demo_config: dict, demo_pretrained: Path,
                                                             tmp_path: Path) -> None:
    synthetic = demo_config["synthetic"][DATASET]
    root = tmp_path / "data"
    generate_synthetic_dataset(root, samples_per_class={split: count for split, count in
                                                        synthetic["samples_per_class"].items() if split != "pretrain"},
                               image_size=tuple(synthetic["image_size"]), background_bias=synthetic["background_bias"],
                               seed=synthetic["seed"])
    entry = demo_config["datasets"][DATASET]
    dataset = {**entry, "name": DATASET, "root": str(root)}
    model = {**demo_config["models"][DEMO_MODEL], "pretrained": str(demo_pretrained)}
    size = model["input_size"]
    masks = build_mask_store(dataset, entry["test_split"], Geometry(size, size), tmp_path / "masks.zarr")
    scores = []
    for method in ("zs", "ft"):
        spec = method_spec_for(demo_config, DEMO_MODEL, DATASET, method)
        checkpoint = train_checkpoint(model, dataset, spec, entry["train_split"], tmp_path / method,
                                      seed=demo_config["seed"], device="cpu")
        cache = run_inference(checkpoint, dataset, entry["test_split"], tmp_path / f"cache-{method}.zarr",
                              explainers=["generic_attention"], batch_size=demo_config["infer"]["batch_size"],
                              device="cpu", model_name=DEMO_MODEL, method_name=method)
        scores.append(score_stores(cache, masks, tmp_path / f"scores-{method}.zarr",
                                   ScoringOptions(demo_config["scoring"]["normalization"]), progress=False))
    table = bootstrap_table(scores, threshold=demo_config["threshold"], undefined=demo_config["undefined_policy"],
                            policies=["all_blocks"], progress=False).set_index("method")
    zero_shot, finetuned = table.loc["zs"], table.loc["ft"]
    shown = table[["accuracy", "pt", "pt_low", "pt_high", "n"]].to_string()
    assert finetuned.pt_high < zero_shot.pt_low, f"the PT intervals overlap:\n{shown}"
