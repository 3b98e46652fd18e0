"""The workflow config: grids of runs, overrides, the train section, and its check (one line per fault)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rationality.config import (
    ablation_cells, ablation_triples, dataset_spec_for, load_config, method_spec_for, ood_dataset_spec, ood_runs,
    run_method, run_seed, run_triples, seed_triples, validate_config,
)
from rationality.data.corruptions import CORRUPTIONS
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
    assert config["train"] == {"device": "auto", "num_workers": 0, "nproc_per_node": 1, "max_batch_per_step": None}


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
    ({"runs": [{"models": ["b16"], "datasets": ["cub"], "methods": ["nope"]}]},
     "runs[0].methods: 'nope' not defined under methods; defined: lp, coop"),
    ({"overrides": [{"models": ["vit-h"], "set": {"lr": 1}}]},
     "overrides[0].models: 'vit-h' not defined under models; defined: b16, blip"),
    ({"overrides": [{"set": {"kind": "finetune"}}]},
     "overrides[0].set.kind: a method's kind cannot be overridden; define another method"),
    ({"train": {"nproc_per_node": 0}}, "train.nproc_per_node: 0 is less than the minimum of 1"),
])
def test_invalid_grids_and_overrides(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_config(**extra))
    assert str(caught.value) == f"config: {message}"


def test_ood_sets_expand_to_runs_and_dataset_specs() -> None:
    ood = {"cub-c": {"dataset": "cub", "corruptions": ["fog", "gaussian_noise"], "severities": [1, 5]},
           "dogs-c": {"dataset": "dogs", "source": "on_the_fly", "corruptions": ["fog"], "seed": 3}}
    config = validate_config(_config(ood=ood, datasets={
        "cub": {"reader": "cub", "root": "c", "options": {"segmentations_dir": "s"}},
        "dogs": {"reader": "stanford_dogs", "root": "d"}}))
    runs = ood_runs(config)
    # 2 models x lp x (cub-c: clean + 2 corruptions x 2 severities; dogs-c: clean + 5 severities)
    assert len(runs) == 2 * ((1 + 4) + (1 + 5))
    assert ("blip", "cub-c", "lp", "gaussian_noise", 5) in runs and ("blip", "cub-c", "lp", "none", 0) in runs
    spec = ood_dataset_spec(config, "cub-c", "fog", 5)
    assert spec["reader"] == "corrupted" and spec["root"] == "c" and spec["test_split"] == "test"
    assert spec["options"] == {"base": {"reader": "cub", "options": {"segmentations_dir": "s"}},
                               "corruption": "fog", "severity": 5, "seed": 0, "jpeg_quality": 85}
    assert ood_dataset_spec(config, "cub-c", "none", 0) == config["datasets"]["cub"]  # on the fly: clean as it is
    assert dataset_spec_for(config, "cub-c") == ood_dataset_spec(config, "cub-c", "fog", 1)
    assert dataset_spec_for(config, "cub") == config["datasets"]["cub"]


def test_ood_set_limited_to_models_and_methods_with_frost_from_a_directory() -> None:
    ood = {"cub-c": {"dataset": "cub", "corruptions": ["frost", "saturate"], "severities": [2], "models": ["b16"],
                     "methods": ["lp"], "frost_dir": "frost", "jpeg_quality": None}}
    runs = [{"models": ["b16", "blip"], "datasets": ["cub"], "methods": ["lp"]},
            {"models": ["b16"], "datasets": ["cub"], "methods": ["coop"]}]  # BLIP has no CoOp
    config = validate_config(_config(ood=ood, runs=runs))
    assert ood_runs(config) == [("b16", "cub-c", "lp", "none", 0), ("b16", "cub-c", "lp", "frost", 2),
                                ("b16", "cub-c", "lp", "saturate", 2)]
    assert ood_dataset_spec(config, "cub-c", "frost", 2)["options"] == {
        "base": {"reader": "cub", "options": {}}, "corruption": "frost", "severity": 2, "seed": 0,
        "jpeg_quality": None, "frost_dir": "frost"}


def test_imagenet_c_from_disk_reuses_the_val_set() -> None:
    datasets = {"imagenet": {"reader": "imagenet", "root": "val", "test_split": "val",
                             "options": {"pre_crop": [256, 224]}},
                "cub": {"reader": "cub", "root": "c"}}
    ood = {"imagenet-c": {"dataset": "imagenet", "source": "imagenet_c", "root": "inc", "corruptions": ["fog"]}}
    config = validate_config(_config(datasets=datasets, ood=ood,
                                     runs={"models": ["b16"], "datasets": ["imagenet"], "methods": ["lp"]}))
    spec = ood_dataset_spec(config, "imagenet-c", "fog", 2)
    assert spec["reader"] == "imagenet_c" and spec["root"] == "inc" and spec["test_split"] == "val"
    assert spec["options"] == {"corruption": "fog", "severity": 2, "val_root": "val"}  # its own pre-crop


def test_imagenet_c_severity_zero_is_the_val_set_in_imagenet_cs_frame() -> None:
    """The main table reads ImageNet in each model's own geometry; ImageNet-C's severity 0 reads the
    same val images through ImageNet-C's Resize(256) + CenterCrop(224), as its files were made."""
    datasets = {"imagenet": {"reader": "imagenet", "root": "val", "test_split": "val", "options": {"boxes": "b.csv"}}}
    ood = {"imagenet-c": {"dataset": "imagenet", "source": "imagenet_c", "root": "inc",
                          "corruptions": ["speckle_noise", "jpeg_compression"]}}
    config = validate_config(_config(datasets=datasets, ood=ood,
                                     runs={"models": ["b16"], "datasets": ["imagenet"], "methods": ["lp"]}))
    assert ood_dataset_spec(config, "imagenet-c", "none", 0) == {
        "reader": "imagenet", "root": "val", "train_split": "train", "test_split": "val",
        "options": {"boxes": "b.csv", "pre_crop": [256, 224]}}
    assert config["datasets"]["imagenet"]["options"] == {"boxes": "b.csv"}  # the main table's: no pre-crop
    assert ood_runs(config)[0] == ("b16", "imagenet-c", "lp", "none", 0)


@pytest.mark.parametrize(("ood", "message"), [
    ({"cub": {"dataset": "cub", "corruptions": ["fog"]}},
     "ood.cub: is also the name of a dataset; an ood set needs a name of its own"),
    ({"x": {"dataset": "nope", "corruptions": ["fog"]}}, "ood.x.dataset: 'nope' is not defined under datasets; "
                                                         "defined: cub, dogs"),
    ({"x": {"dataset": "cub", "source": "imagenet_c", "corruptions": ["fog"]}},
     "ood.x.root: missing (required with source imagenet_c: ImageNet-C's directory)"),
    ({"x": {"dataset": "cub", "corruptions": ["fog", "rain"]}},
     f"ood.x.corruptions: unknown corruption 'rain'; allowed: {', '.join(CORRUPTIONS)}"),
    ({"x": {"dataset": "cub", "corruptions": ["fog"], "severities": [6]}},
     "ood.x.severities[0]: 6 is greater than the maximum of 5"),
    ({"x": {"dataset": "cub", "corruptions": ["frost"]}},
     "ood.x.frost_dir: missing (on-the-fly frost needs the directory of ImageNet-C's frost1.png ... frost5.jpg)"),
    ({"x": {"dataset": "cub", "source": "imagenet_c", "root": "r", "corruptions": ["frost"], "frost_dir": "f"}},
     "ood.x.frost_dir: applies to source on_the_fly only (ImageNet-C's files are already frosted)"),
    ({"x": {"dataset": "cub", "corruptions": ["fog"], "models": ["vit-h"]}},
     "ood.x.models: 'vit-h' not defined under models; defined: b16, blip"),
    ({"x": {"dataset": "cub", "corruptions": ["fog"], "methods": ["zs"]}},
     "ood.x.methods: 'zs' not defined under methods; defined: lp, coop"),
    ({"x": {"dataset": "cub", "corruptions": ["fog"], "jpeg_quality": 0}},
     "ood.x.jpeg_quality: 0 is less than the minimum of 1"),
])
def test_invalid_ood_sets(ood: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_config(ood=ood))
    assert str(caught.value) == f"config: {message}"


def _ablation(**changes) -> dict:
    return {"model": "b16", "dataset": "cub", "methods": ["lp", "coop"],
            "setups": {"adamw": {"label": "AdamW", "set": {"lp": {"optimizer": "adamw"}}},
                       "grad": {"label": "gradient", "explainer": "attention_gradient"}}, **changes}


def test_ablation_setups_train_their_own_runs_from_the_resolved_spec() -> None:
    overrides = [{"models": ["b16"], "datasets": ["cub"], "methods": ["lp"], "set": {"epochs": 3}}]
    config = validate_config(_config(ablations={"t": _ablation()}, overrides=overrides))
    cells = [(c.setup, c.method, c.run, c.explainer) for c in ablation_cells(config)]
    assert cells == [("adamw", "lp", ("b16", "cub", "lp@adamw"), "generic_attention"),
                     ("adamw", "coop", ("b16", "cub", "coop"), "generic_attention"),
                     ("grad", "lp", ("b16", "cub", "lp"), "attention_gradient"),
                     ("grad", "coop", ("b16", "cub", "coop"), "attention_gradient")]
    assert ablation_triples(config) == [("b16", "cub", "lp@adamw"), ("b16", "cub", "coop")]  # coop is not in runs
    assert method_spec_for(config, "b16", "cub", "lp@adamw") == {
        "kind": "linear_probe", "lr": 1e-3, "epochs": 3, "optimizer": "adamw"}


@pytest.mark.parametrize(("ablation", "message"), [
    (_ablation(model="vit"), "ablations.t.model: 'vit' is not defined under models; defined: b16, blip"),
    (_ablation(methods=["lp", "zs"]), "ablations.t.methods: 'zs' not defined under methods; defined: lp, coop"),
    (_ablation(setups={"s": {"label": "x", "explainer": "raw_attention"}}),
     "ablations.t.setups.s.explainer: 'raw_attention' is not one of the config's explainers (the caches hold only "
     "those); allowed: generic_attention, attention_gradient"),
    (_ablation(setups={"s": {"label": "x", "set": {"coop": {"lr": 1.0}}}, }, methods=["lp"]),
     "ablations.t.setups.s.set.coop: not one of the ablation's methods (lp)"),
    (_ablation(setups={"s": {"label": "x", "set": {"lp": {"learning_rate": 1.0}}}}),
     "ablations.t.setups.s.set.lp.learning_rate: not a hyper-parameter of kind 'linear_probe'"),
])
def test_ablation_errors_name_the_key(ablation: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_config(ablations={"t": ablation}))
    assert str(caught.value).startswith(f"config: {message}")


def test_ablation_run_names_are_unique() -> None:
    methods = {"lp": {"kind": "linear_probe"}, "lp@adamw": {"kind": "linear_probe"}}
    with pytest.raises(ConfigError, match="run name 'lp@adamw' is also a method's name"):
        validate_config(_config(ablations={"t": _ablation(methods=["lp"])}, methods=methods))
    other = _ablation(methods=["lp"], setups={"adamw": {"label": "y", "set": {"lp": {"lr": 1.0}}}})
    with pytest.raises(ConfigError, match="run 'lp@adamw' of b16 on cub is set differently by another ablation"):
        validate_config(_config(ablations={"t": _ablation(), "u": other}))
    with pytest.raises(ConfigError, match="does not match"):
        validate_config(_config(ablations={"t": _ablation(setups={"a/b": {"label": "x"}})}))


def test_seeds_add_a_run_per_extra_seed_of_every_trained_method() -> None:
    methods = {"lp": {"kind": "linear_probe"}, "zs": {"kind": "zero_shot"}}
    runs = {"models": ["b16"], "datasets": ["cub"], "methods": ["zs", "lp"]}
    config = validate_config(_config(methods=methods, runs=runs, seeds=[3, 1, 2]))
    assert seed_triples(config) == [("b16", "cub", "lp@seed1"), ("b16", "cub", "lp@seed2")]  # zero-shot runs once
    assert [run_seed(config, run) for run in ("lp", "lp@seed1", "zs")] == [3, 1, 3]
    assert [run_method(config, run) for run in ("lp", "lp@seed2")] == ["lp", "lp"]
    assert seed_triples(validate_config(_config(methods=methods, runs=runs))) == []
    with pytest.raises(ConfigError, match="methods.lp@seed1: a method name cannot end in @seed<n>"):
        validate_config(_config(methods={**methods, "lp@seed1": {"kind": "linear_probe"}}, runs=runs))


# One line per fault, naming the key path and what is allowed there (names from the registries).
LP_HYPERPARAMETERS = ("adam_beta1, adam_beta2, batch_size, epochs, eps, head_init, lr, normalize_features, optimizer, "
                      "precision, prompt_template, shots, weight_decay")


def _faulty(path: str, value: object) -> dict:
    """``_config()`` with ``value`` at the dotted key ``path`` (None deletes the key)."""
    config = _config()
    *parents, last = path.split(".")
    target = config
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return config


@pytest.mark.parametrize(("path", "value", "message"), [
    ("methods.lp.learning_rate", 1e-3,
     f"methods.lp.learning_rate: not a hyper-parameter of kind 'linear_probe'; allowed: {LP_HYPERPARAMETERS}"),
    ("methods.lp.epochs", "ten", "methods.lp.epochs: must be an integer, got 'ten'"),
    ("methods.lp.lr", "fast", "methods.lp.lr: must be a number, got 'fast'"),
    ("methods.lp.lr", float("nan"), "methods.lp.lr: must be a finite number, got nan"),
    ("methods.lp.precision", "fp8", "methods.lp.precision: unknown precision 'fp8'; allowed: fp32, tf32, bf16, fp16"),
    ("methods.lp.kind", "fine_tune", "methods.lp.kind: unknown adaptation method 'fine_tune'; known: coop, external, "
                                     "finetune, flcp, linear_probe, tip_adapter_f, zero_shot"),
    ("models.b16.adapter", "openclip", "models.b16.adapter: unknown model adapter 'openclip'; known: albef, blip, "
                                       "open_clip, transformers"),
    ("datasets.cub.reader", "cub200", "datasets.cub.reader: unknown dataset reader 'cub200'; known: caltech101, coco, "
                                      "corrupted, cub, folder, imagenet, imagenet_c, stanford_dogs, synthetic"),
    ("datasets.cub.options", {"mask_treshold": 0.5}, "datasets.cub.options.mask_treshold: unknown key; allowed: "
                                                     "expect_classes, mask_threshold, missing_annotation, "
                                                     "segmentations_dir"),
    ("datasets.cub.options", {"mask_threshold": 2}, "datasets.cub.options.mask_threshold: 2 is greater than the "
                                                    "maximum of 1"),
    ("explainers", ["generic_attention", "gradcam"],
     "explainers[1]: unknown explainer 'gradcam'; known: attention_gradient, attention_rollout, generic_attention, "
     "raw_attention"),
    ("infer.precision", "fp64", "infer.precision: unknown precision 'fp64'; allowed: fp32, tf32, bf16, fp16"),
    ("threshold", float("nan"), "threshold: must be a finite number, got nan"),
    ("threshold", 1.5, "threshold: 1.5 is greater than the maximum of 1"),
    ("models.b16.pretrianed", "openai", "models.b16.pretrianed: unknown key; allowed: adapter, image_normalization, "
                                        "input_size, name, options, patch_size, pretrained, seed"),
    ("models.b16.input_size", None, "models.b16.input_size: must be an integer, got None"),
    ("runs", {"models": ["b16"], "datasets": ["cub"]}, "runs.methods: missing (required)"),
])
def test_each_fault_is_one_line_naming_the_key_and_the_allowed_values(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_faulty(path, value), source="my.yaml")
    assert str(caught.value) == f"my.yaml: {message}"


def test_an_override_is_checked_against_every_run_it_applies_to() -> None:
    """An override without a method list reaches coop too, which has no head_init."""
    config = _config(runs=[{"models": ["b16"], "datasets": ["cub"], "methods": ["lp", "coop"]}],
                     overrides=[{"datasets": ["cub"], "set": {"head_init": "zero_shot"}}])
    with pytest.raises(ConfigError, match=r"^config: overrides\[0\].set.head_init: not a hyper-parameter of kind "
                                          r"'coop'; allowed: .* \(in run b16/cub/coop\)$"):
        validate_config(config)
    config["overrides"][0]["methods"] = ["lp"]
    assert method_spec_for(validate_config(config), "b16", "cub", "lp")["head_init"] == "zero_shot"


def test_registries_decide_the_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A newly registered explainer is a valid config value without any schema edit."""
    from rationality.explain.base import _EXPLAINERS, list_explainers

    list_explainers()  # the built-ins first
    monkeypatch.setitem(_EXPLAINERS._entries, "test_only_explainer", object)
    assert validate_config(_config(explainers=["test_only_explainer"]))["explainers"] == ["test_only_explainer"]


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("seed: 0\nmethods:\n  lp: {kind: linear_probe\nruns: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:4:5: not valid YAML: while parsing a flow mapping "
                                        "expected ',' or '}'")


@pytest.mark.parametrize(("scoring", "message"), [
    ({"metrics": ["rma", "gradcam"]}, r"scoring\.metrics\[1\]: unknown localisation metric 'gradcam'; known: "
                                      r"attribution_localisation, auc, "),
    ({"thresholds": {"rma": 0.4}}, r"scoring\.thresholds\.rma: RMA's threshold is the top-level key `threshold`"),
    ({"thresholds": {"auc": 0.8}}, r"scoring\.thresholds\.auc: 'auc' is not one of scoring\.metrics \(rma\)"),
])
def test_metrics_come_from_the_registry_and_thresholds_name_scored_metrics(scoring: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^my.yaml: {message}"):
        validate_config(_config(scoring=scoring), source="my.yaml")
    assert validate_config(_config(scoring={"metrics": ["rma", "auc"], "thresholds": {"auc": 0.8}}))["scoring"] == {
        "normalization": "minmax", "metrics": ["rma", "auc"], "thresholds": {"auc": 0.8}}
