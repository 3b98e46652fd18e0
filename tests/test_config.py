"""The workflow config: grids of runs, per-(model, dataset, method) overrides, the train section."""

from __future__ import annotations

import pytest

from rationality.config import method_spec_for, run_triples, validate_config
from rationality.errors import ConfigError


def _config(**extra) -> dict:
    model = {"adapter": "open_clip", "name": "x", "input_size": 64, "patch_size": 8}
    return {
        "models": {"b16": model, "blip": {**model, "adapter": "blip"}},
        "datasets": {"cub": {"reader": "cub", "root": "c"}, "dogs": {"reader": "stanford_dogs", "root": "d"}},
        "methods": {"lp": {"kind": "linear_probe", "lr": 1e-3}, "coop": {"kind": "coop"}},
        "runs": {"models": ["b16", "blip"], "datasets": ["cub", "dogs"], "methods": ["lp"]},
        **extra,
    }


def test_one_grid_is_a_cross_product() -> None:
    config = validate_config(_config())
    assert run_triples(config) == [("b16", "cub", "lp"), ("b16", "dogs", "lp"), ("blip", "cub", "lp"),
                                   ("blip", "dogs", "lp")]
    assert config["train"] == {"device": "auto", "num_workers": 0, "nproc_per_node": 1}


def test_a_list_of_grids_is_their_union_once() -> None:
    runs = [{"models": ["b16", "blip"], "datasets": ["cub"], "methods": ["lp"]},
            {"models": ["b16"], "datasets": ["cub"], "methods": ["lp", "coop"]}]
    assert run_triples(validate_config(_config(runs=runs))) == [
        ("b16", "cub", "lp"), ("blip", "cub", "lp"), ("b16", "cub", "coop")]


def test_overrides_apply_in_order_to_matching_runs_only() -> None:
    overrides = [{"methods": ["lp"], "set": {"lr": 5e-4, "epochs": 3}},
                 {"models": ["blip"], "datasets": ["dogs"], "set": {"lr": 1e-2}}]
    config = validate_config(_config(overrides=overrides))
    assert method_spec_for(config, "b16", "cub", "lp") == {"kind": "linear_probe", "lr": 5e-4, "epochs": 3}
    assert method_spec_for(config, "blip", "dogs", "lp") == {"kind": "linear_probe", "lr": 1e-2, "epochs": 3}
    assert method_spec_for(config, "blip", "dogs", "coop") == {"kind": "coop", "lr": 1e-2}
    assert config["methods"]["lp"] == {"kind": "linear_probe", "lr": 1e-3}  # the base spec is unchanged


@pytest.mark.parametrize(("extra", "message"), [
    ({"runs": [{"models": ["b16"], "datasets": ["cub"], "methods": ["nope"]}]}, r"runs\[0\].methods: \['nope'\]"),
    ({"overrides": [{"models": ["vit-h"], "set": {"lr": 1}}]}, r"overrides\[0\].models: \['vit-h'\]"),
    ({"overrides": [{"set": {"kind": "finetune"}}]}, "overrides.0.set"),
    ({"train": {"nproc_per_node": 0}}, "train.nproc_per_node"),
])
def test_invalid_grids_and_overrides(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(**extra))
