"""Configuration: the JSON Schema in ``config.schema.yaml``, applied with defaults, with clear errors."""

from __future__ import annotations

import copy
import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from rationality.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@lru_cache(maxsize=1)
def config_schema() -> dict[str, Any]:
    """The workflow's config schema (also used by Snakemake's ``validate``)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in schema.get("properties", {}):
                    _fill_defaults(value, extra, root)
    return instance


def _check(instance: Any, schema: dict[str, Any], source: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines))


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate a whole workflow config and return a copy with defaults filled in.

    Also checks that every name under ``runs`` exists.

    Raises:
        ConfigError: listing every violation with its key path.
    """
    schema = config_schema()
    _check(config, schema, source)
    filled = _fill_defaults(copy.deepcopy(config), schema, schema)
    entries = [(f"runs[{i}]", grid) for i, grid in enumerate(run_grids(filled))]
    entries += [(f"overrides[{i}]", entry) for i, entry in enumerate(filled["overrides"])]
    for where, entry in entries:
        for section in ("models", "datasets", "methods"):
            unknown = [name for name in entry.get(section, []) if name not in filled[section]]
            if unknown:
                raise ConfigError(f"{source} is invalid:\n  {where}.{section}: {unknown} not defined under {section}")
    _check_ood(filled, source)
    _check_ablations(filled, source)
    _check_registered_names(filled, source)
    _check_seeds(filled, source)
    for model, pretrain in filled["pretrain"].items():
        expected = pretrained_path(model)
        if model not in filled["models"] or filled["models"][model]["pretrained"] != expected:
            raise ConfigError(f"{source} is invalid:\n  pretrain.{model}: needs models.{model}.pretrained: {expected}")
        if pretrain["dataset"] not in filled["datasets"]:
            raise ConfigError(f"{source} is invalid:\n  pretrain.{model}.dataset: {pretrain['dataset']!r} "
                              f"is not defined under datasets")
    return filled


def _check_registered_names(config: dict[str, Any], source: str) -> None:
    """Explainers and localisation metrics are registered (the schema takes any name: registries are open);
    every metric can score every model's frame; ``scoring.thresholds`` names scored metrics other than RMA."""
    from rationality.explain.base import list_explainers
    from rationality.scoring.localisation import create_metric, list_metrics

    problems = [f"explainers: {name!r} is not a registered explainer; known: {', '.join(list_explainers())}"
                for name in config["explainers"] if name not in list_explainers()]
    scoring = config["scoring"]
    problems += [f"scoring.metrics: {name!r} is not a registered localisation metric; known: "
                 f"{', '.join(list_metrics())}" for name in scoring["metrics"] if name not in list_metrics()]
    for name in scoring["thresholds"]:
        if name == "rma":
            problems.append("scoring.thresholds.rma: RMA's threshold is the top-level key `threshold`")
        elif name not in scoring["metrics"]:
            problems.append(f"scoring.thresholds.{name}: {name!r} is not one of scoring.metrics {scoring['metrics']}")
    if not problems:
        for name in scoring["metrics"]:
            for model, spec in config["models"].items():
                try:
                    create_metric(name).check_frame((spec["input_size"], spec["input_size"]))
                except ConfigError as exc:
                    problems.append(f"scoring.metrics: models.{model}: {exc}")
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))


def _check_seeds(config: dict[str, Any], source: str) -> None:
    """No method or ablation setup is named like the run of an extra seed."""
    problems = [f"methods.{name}: a method name cannot end in {SEED_SEPARATOR}seed<n> (the runs of extra seeds)"
                 for name in config["methods"] if SEED_RUN.fullmatch(name)]
    problems += [f"ablations.{name}.setups.{setup}: a setup cannot be named seed<n> (the runs of extra seeds)"
                 for name, ablation in config["ablations"].items() for setup in ablation["setups"]
                 if re.fullmatch(r"seed\d+", setup)]
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))


def _check_ood(config: dict[str, Any], source: str) -> None:
    from rationality.data.corruptions import CORRUPTIONS

    for name, ood in config["ood"].items():
        problems = []
        if name in config["datasets"]:
            problems.append("is also the name of a dataset")
        if ood["dataset"] not in config["datasets"]:
            problems.append(f"dataset {ood['dataset']!r} is not defined under datasets")
        if ood["source"] == "imagenet_c" and "root" not in ood:
            problems.append("source imagenet_c needs root (ImageNet-C's directory)")
        unknown = [c for c in ood["corruptions"] if c not in CORRUPTIONS]
        if unknown:
            problems.append(f"unknown corruptions {unknown}; known: {list(CORRUPTIONS)}")
        if ood["source"] == "on_the_fly" and "frost" in ood["corruptions"] and "frost_dir" not in ood:
            problems.append("on-the-fly frost needs frost_dir (the directory of ImageNet-C's frost1.png ... frost5.jpg)")
        if ood["source"] == "imagenet_c" and "frost_dir" in ood:
            problems.append("frost_dir applies to source on_the_fly only (ImageNet-C's files are already frosted)")
        for section in ("models", "methods"):
            undefined = [entry for entry in ood.get(section, []) if entry not in config[section]]
            if undefined:
                problems.append(f"{section} {undefined} not defined under {section}")
        if problems:
            raise ConfigError(f"{source} is invalid:\n  ood.{name}: " + "; ".join(problems))


def _check_ablations(config: dict[str, Any], source: str) -> None:
    """Check every ``ablations`` entry against the config and fill each setup's explainer."""
    variants: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name, ablation in config["ablations"].items():
        where = f"ablations.{name}"
        problems = [f"{section[:-1]} {ablation[section[:-1]]!r} is not defined under {section}"
                    for section in ("models", "datasets") if ablation[section[:-1]] not in config[section]]
        problems += [f"method {method!r} is not defined under methods"
                     for method in ablation["methods"] if method not in config["methods"]]
        for setup_name, setup in ablation["setups"].items():
            setup["explainer"] = setup["explainer"] or config["explainers"][0]
            if setup["explainer"] not in config["explainers"]:
                problems.append(f"setups.{setup_name}.explainer {setup['explainer']!r} is not one of the config's "
                                f"explainers {config['explainers']} (the caches hold only those)")
            for method, changes in setup["set"].items():
                run = ablation_run_name(method, setup_name)
                key = (ablation["model"], ablation["dataset"], run)
                if method not in ablation["methods"]:
                    problems.append(f"setups.{setup_name}.set.{method}: not one of the ablation's methods")
                elif run in config["methods"]:
                    problems.append(f"setups.{setup_name}: its run name {run!r} is also a method's name")
                elif variants.setdefault(key, changes) != changes:
                    problems.append(f"setups.{setup_name}: run {run!r} of {key[0]} on {key[1]} is set differently "
                                    f"by another ablation")
        if problems:
            raise ConfigError(f"{source} is invalid:\n  {where}: " + "; ".join(problems))


def ood_dataset_spec(config: dict[str, Any], name: str, corruption: str, severity: int) -> dict[str, Any]:
    """The dataset spec of one (out-of-distribution set, corruption, severity).

    Its samples are those of the clean dataset's test split: same ids, labels and masks. Severity 0
    is the clean dataset in the set's own frame: for ``source: imagenet_c``, the ImageNet val images
    through ImageNet-C's Resize(256) + CenterCrop(224), so that severities 0-5 show the same field
    of view; for ``on_the_fly``, the clean dataset as it is (whatever ``corruption`` says).
    """
    from rationality.data.geometry import IMAGENET_C_PRE_CROP

    ood = config["ood"][name]
    clean = config["datasets"][ood["dataset"]]
    options = dict(clean.get("options", {}))
    if ood["source"] == "imagenet_c":  # the imagenet_c reader applies ImageNet-C's own 256/224 pre-crop
        if severity == 0:
            return {**clean, "options": {**options, "pre_crop": [IMAGENET_C_PRE_CROP.resize, IMAGENET_C_PRE_CROP.crop]}}
        options.pop("pre_crop", None)
        return {**clean, "reader": "imagenet_c", "root": ood["root"],
                "options": {**options, "corruption": corruption, "severity": severity, "val_root": clean["root"]}}
    if severity == 0:
        return clean
    extra = {key: ood[key] for key in ("frost_dir",) if key in ood}
    return {**clean, "reader": "corrupted",
            "options": {"base": {"reader": clean["reader"], "options": options}, "corruption": corruption,
                        "severity": severity, "seed": ood["seed"], "jpeg_quality": ood["jpeg_quality"], **extra}}


def dataset_spec_for(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The spec of a dataset, or of an out-of-distribution set's first (corruption, severity): what
    its masks are built from (masks do not depend on the corruption)."""
    if name in config["datasets"]:
        return config["datasets"][name]
    ood = config["ood"][name]
    return ood_dataset_spec(config, name, ood["corruptions"][0], ood["severities"][0])


def ood_runs(config: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """(model, ood set, method, corruption, severity) of every out-of-distribution store: for each run
    on an ood set's clean dataset (of its ``models`` and ``methods``, when given), the clean images
    in the set's frame as (``none``, 0), then every corruption at every severity."""
    from rationality.schema import CLEAN

    return [(model, name, method, corruption, severity)
            for model, dataset, method in run_triples(config)
            for name, ood in config["ood"].items()
            if ood["dataset"] == dataset and model in ood.get("models", [model])
            and method in ood.get("methods", [method])
            for corruption, severity in [(CLEAN, 0)] + [(c, s) for c in ood["corruptions"] for s in ood["severities"]]]


def run_grids(config: dict[str, Any]) -> list[dict[str, list[str]]]:
    """The ``runs`` grids ``{models, datasets, methods}`` as a list (``runs`` may be a single grid)."""
    return config["runs"] if isinstance(config["runs"], list) else [config["runs"]]


def run_triples(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every (model, dataset, method) of ``runs`` (a grid or a list of grids), once, in config order."""
    triples = [(model, dataset, method) for grid in run_grids(config)
               for model in grid["models"] for dataset in grid["datasets"] for method in grid["methods"]]
    return list(dict.fromkeys(triples))


#: Joins a method and an ablation setup in the name of the setup's own run: ``lp@adamw``.
ABLATION_SEPARATOR = "@"
#: Joins a method and a seed in the name of the run of an extra seed: ``lp@seed1``.
SEED_SEPARATOR = ABLATION_SEPARATOR
SEED_RUN = re.compile(rf"(?P<method>.+){SEED_SEPARATOR}seed(?P<seed>\d+)")


def run_seeds(config: dict[str, Any]) -> list[int]:
    """The seeds every trained method runs with: ``seeds``, or ``[seed]``."""
    return list(config["seeds"]) if config.get("seeds") is not None else [config["seed"]]


def seed_run_name(method: str, seed: int) -> str:
    """The run name of ``method`` trained with an extra seed (not the first of :func:`run_seeds`)."""
    return f"{method}{SEED_SEPARATOR}seed{seed}"


def seed_triples(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The runs of the extra seeds, (model, dataset, ``<method>@seed<n>``), for every run of the ``runs``
    grids whose method depends on the seed (not zero-shot), in config order."""
    from rationality.methods.base import method_class

    return [(model, dataset, seed_run_name(method, seed))
            for seed in run_seeds(config)[1:] for model, dataset, method in run_triples(config)
            if method_class(config["methods"][method]["kind"]).seeded]


def run_seed(config: dict[str, Any], run: str) -> int:
    """The seed a run trains with: the extra seed of a ``<method>@seed<n>`` run, else the first seed."""
    match = SEED_RUN.fullmatch(run)
    return int(match["seed"]) if match and match["method"] in config["methods"] else run_seeds(config)[0]


def run_method(config: dict[str, Any], run: str) -> str:
    """The method a run's stores are labelled with: ``lp`` for ``lp@seed1`` (the store records the seed),
    else the run name itself (an ablation setup's run keeps its name, e.g. ``lp@adamw``)."""
    match = SEED_RUN.fullmatch(run)
    return match["method"] if match and match["method"] in config["methods"] else run


def ablation_run_name(method: str, setup: str) -> str:
    """The run name of ``method`` under an ablation setup that changes its hyper-parameters."""
    return f"{method}{ABLATION_SEPARATOR}{setup}"


@dataclasses.dataclass(frozen=True)
class AblationCell:
    """One cell group of an ablation table: a setup's method, the run that fills it and whose heatmaps.

    Attributes:
        ablation: the table's name (a key of ``ablations``).
        setup: the setup's name; ``label`` its row-group title; ``explainer`` its heatmaps.
        method: the table's column (a method name).
        run: the (model, dataset, method) run whose scores fill the cells: ``method`` itself, or
            ``<method>@<setup>`` when the setup changes its hyper-parameters.
        changes: the hyper-parameters the setup changes (empty for the method's own run).
    """

    ablation: str
    setup: str
    label: str
    explainer: str
    method: str
    run: tuple[str, str, str]
    changes: dict[str, Any]


def ablation_cells(config: dict[str, Any]) -> list[AblationCell]:
    """Every (ablation, setup, method) of ``ablations``, in config order."""
    return [AblationCell(name, setup_name, setup["label"], setup["explainer"], method,
                         (ablation["model"], ablation["dataset"],
                          ablation_run_name(method, setup_name) if method in setup["set"] else method),
                         dict(setup["set"].get(method, {})))
            for name, ablation in config["ablations"].items()
            for setup_name, setup in ablation["setups"].items() for method in ablation["methods"]]


def ablation_triples(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (model, dataset, method) runs the ablation tables need beyond ``runs``, once, in config order:
    the setups' own runs (``<method>@<setup>``), and any method's run on the ablation's model and
    dataset that ``runs`` lacks."""
    main = set(run_triples(config))
    return list(dict.fromkeys(cell.run for cell in ablation_cells(config) if cell.run not in main))


def method_spec_for(config: dict[str, Any], model: str, dataset: str, method: str) -> dict[str, Any]:
    """The method spec of one run: ``methods.<method>`` with every matching ``overrides`` entry applied;
    for an ablation setup's run ``<method>@<setup>``, that spec with the setup's changes; for an extra
    seed's run ``<method>@seed<n>``, the method's."""
    if method not in config["methods"] and run_method(config, method) in config["methods"]:
        return method_spec_for(config, model, dataset, run_method(config, method))
    if method not in config["methods"]:
        cell = next(cell for cell in ablation_cells(config) if cell.run == (model, dataset, method))
        return {**method_spec_for(config, model, dataset, cell.method), **cell.changes}
    spec = dict(config["methods"][method])
    for entry in config.get("overrides", []):
        if all(name in entry.get(section, [name])
               for section, name in (("models", model), ("datasets", dataset), ("methods", method))):
            spec.update(entry["set"])
    return spec


def pretrained_path(model: str) -> str:
    """Where the workflow writes the weights of a model it pretrains itself."""
    return f"results/pretrained/{model}.pt"


def validate_spec(kind: str, spec: Any, source: str) -> dict[str, Any]:
    """Validate a ``model``, ``dataset``, ``method`` or ``synthetic`` spec; returns it with defaults."""
    schema = config_schema()
    sub = {"$defs": schema["$defs"], **schema["$defs"][kind]}
    _check(spec, sub, source)
    return _fill_defaults(copy.deepcopy(spec), sub, schema)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    return validate_config(yaml.safe_load(path.read_text()) or {}, source=str(path))
