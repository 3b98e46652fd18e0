"""Configuration: the JSON Schema in ``config.schema.yaml``, applied with defaults, with clear errors."""

from __future__ import annotations

import copy
import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from rationality._validation import check_schema
from rationality.errors import ConfigError
from rationality.precision import check_precision

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@lru_cache(maxsize=1)
def config_schema() -> dict[str, Any]:
    """The config's JSON Schema (``workflow/schemas/config.schema.yaml`` links to the file).

    Registered names (adapters, readers, methods, explainers) are not in it: :func:`validate_config`
    checks them against the registries, so that a new registry entry is accepted without editing it.
    """
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


def validate_config(config: dict[str, Any], source: str = "config", deep: bool = True) -> dict[str, Any]:
    """Check a whole workflow config, as the workflow does before any job runs; a copy with defaults filled in.

    Beyond the schema: every name under ``runs`` and ``overrides`` is defined; adapters, dataset
    readers and explainers are registered and precisions known; each dataset's reader options fit
    the reader's declaration; every method spec, and every run's spec with its overrides applied,
    builds its method (so names, types and ranges of hyper-parameters are the method's own), ablation
    setups included; ood sets, ablations and pretraining entries are consistent. Numbers must be finite.

    Args:
        source: what the config is (its files), for the message.
        deep: also check against the registries (imports torch, a few seconds). False only where
            the same config was checked already: a cluster job started by a checked workflow run.

    Raises:
        ConfigError: one line, ``<source>: <key path>: <what is wrong>; <what is allowed>``, for the
            first fault found.
    """
    try:
        schema = config_schema()
        check_schema(config, schema)
        filled = _fill_defaults(copy.deepcopy(config), schema, schema)
        _check_names(filled)
        _check_pretrain(filled)
        _check_ablations(filled)
        _check_seeds(filled)
        if deep:
            _check_registered(filled)
            _check_metrics(filled)
            _check_methods(filled)
            _check_capabilities(filled)
            _check_ood(filled)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return filled


def _check_names(config: dict[str, Any]) -> None:
    """Every model, dataset and method named under ``runs`` and ``overrides`` is defined."""
    entries = [(f"runs[{i}]" if isinstance(config["runs"], list) else "runs", grid)
               for i, grid in enumerate(run_grids(config))]
    entries += [(f"overrides[{i}]", entry) for i, entry in enumerate(config["overrides"])]
    for where, entry in entries:
        for section in ("models", "datasets", "methods"):
            unknown = [name for name in entry.get(section, []) if name not in config[section]]
            if unknown:
                raise ConfigError(f"{', '.join(map(repr, unknown))} not defined under {section}; defined: "
                                  f"{', '.join(config[section])}", f"{where}.{section}")


def _check_registered(config: dict[str, Any]) -> None:
    """Adapters, readers (and their options), explainers and the GPU stage's precision exist."""
    from rationality.data.base import check_reader_options
    from rationality.explain.base import check_explainer
    from rationality.models.base import check_adapter

    for name, model in config["models"].items():
        check_adapter(model["adapter"], f"models.{name}.adapter")
    for name, dataset in config["datasets"].items():
        try:
            check_reader_options(dataset["reader"], dataset["options"])
        except ConfigError as error:
            raise error.within(f"datasets.{name}") from None
    for i, explainer in enumerate(config["explainers"]):
        check_explainer(explainer, f"explainers[{i}]")
    check_precision(config["infer"]["precision"], "infer.precision")


def _check_capabilities(config: dict[str, Any]) -> None:
    """Every run's model can run its method (e.g. CoOp needs a text tower with prompt embeddings)."""
    from rationality.methods.base import check_runs_supported

    check_runs_supported(config["models"], config["methods"], run_triples(config))


def _check_methods(config: dict[str, Any]) -> None:
    """Build every method spec, and every run's spec after each override that applies to it.

    A fault is reported at the key that brings it in: ``methods.<name>`` for the spec itself,
    ``overrides[i].set`` (naming the run) for an override.
    """
    from rationality.methods import create_method

    for name, spec in config["methods"].items():
        try:
            create_method(spec)
        except ConfigError as error:
            raise error.within(f"methods.{name}") from None
    for i, entry in enumerate(config["overrides"]):
        if "kind" in entry["set"]:
            raise ConfigError("a method's kind cannot be overridden; define another method", f"overrides[{i}].set.kind")
    for run in run_triples(config):
        spec = dict(config["methods"][run[2]])
        for i, entry in enumerate(config["overrides"]):
            if _matches(entry, *run):
                spec.update(entry["set"])
                try:
                    create_method(spec)
                except ConfigError as error:
                    located = error.within(f"overrides[{i}].set")
                    raise ConfigError(f"{located.reason} (in run {'/'.join(run)})", located.key) from None
    for cell in ablation_cells(config):
        if cell.changes:
            try:
                create_method(method_spec_for(config, *cell.run))
            except ConfigError as error:
                raise error.within(f"ablations.{cell.ablation}.setups.{cell.setup}.set.{cell.method}") from None


def _check_metrics(config: dict[str, Any]) -> None:
    """Localisation metrics are registered (the schema takes any name: registries are open) and can score
    every model's frame; ``scoring.thresholds`` names scored metrics other than RMA."""
    from rationality.scoring.localisation import check_metric, create_metric

    scoring = config["scoring"]
    for i, name in enumerate(scoring["metrics"]):
        check_metric(name, f"scoring.metrics[{i}]")
    for name in scoring["thresholds"]:
        if name == "rma":
            raise ConfigError("RMA's threshold is the top-level key `threshold`", "scoring.thresholds.rma")
        if name not in scoring["metrics"]:
            raise ConfigError(f"{name!r} is not one of scoring.metrics ({', '.join(scoring['metrics'])})",
                              f"scoring.thresholds.{name}")
    for i, name in enumerate(scoring["metrics"]):
        for model, spec in config["models"].items():
            try:
                create_metric(name).check_frame((spec["input_size"], spec["input_size"]))
            except ConfigError as error:
                raise ConfigError(f"{error.reason} (models.{model})", f"scoring.metrics[{i}]") from None


def _check_seeds(config: dict[str, Any]) -> None:
    """No method or ablation setup is named like the run of an extra seed."""
    for name in config["methods"]:
        if SEED_RUN.fullmatch(name):
            raise ConfigError(f"a method name cannot end in {SEED_SEPARATOR}seed<n> (the runs of extra seeds)",
                              f"methods.{name}")
    for name, ablation in config["ablations"].items():
        for setup in ablation["setups"]:
            if re.fullmatch(r"seed\d+", setup):
                raise ConfigError("a setup cannot be named seed<n> (the runs of extra seeds)",
                                  f"ablations.{name}.setups.{setup}")


def _check_ood(config: dict[str, Any]) -> None:
    from rationality.data.corruptions import CORRUPTIONS

    for name, ood in config["ood"].items():
        if name in config["datasets"]:
            raise ConfigError("is also the name of a dataset; an ood set needs a name of its own", f"ood.{name}")
        if ood["dataset"] not in config["datasets"]:
            raise ConfigError(f"{ood['dataset']!r} is not defined under datasets; defined: "
                              f"{', '.join(config['datasets'])}", f"ood.{name}.dataset")
        if ood["source"] == "imagenet_c" and "root" not in ood:
            raise ConfigError("missing (required with source imagenet_c: ImageNet-C's directory)", f"ood.{name}.root")
        unknown = [c for c in ood["corruptions"] if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(f"unknown corruption {unknown[0]!r}; allowed: {', '.join(CORRUPTIONS)}",
                              f"ood.{name}.corruptions")
        if ood["source"] == "on_the_fly" and "frost" in ood["corruptions"] and "frost_dir" not in ood:
            raise ConfigError("missing (on-the-fly frost needs the directory of ImageNet-C's frost1.png ... "
                              "frost5.jpg)", f"ood.{name}.frost_dir")
        if ood["source"] == "imagenet_c" and "frost_dir" in ood:
            raise ConfigError("applies to source on_the_fly only (ImageNet-C's files are already frosted)",
                              f"ood.{name}.frost_dir")
        for section in ("models", "methods"):
            undefined = [entry for entry in ood.get(section, []) if entry not in config[section]]
            if undefined:
                raise ConfigError(f"{', '.join(map(repr, undefined))} not defined under {section}; defined: "
                                  f"{', '.join(config[section])}", f"ood.{name}.{section}")


def _check_ablations(config: dict[str, Any]) -> None:
    """Check every ``ablations`` entry against the config and fill each setup's explainer."""
    variants: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name, ablation in config["ablations"].items():
        where = f"ablations.{name}"
        for section in ("models", "datasets"):
            if ablation[section[:-1]] not in config[section]:
                raise ConfigError(f"{ablation[section[:-1]]!r} is not defined under {section}; defined: "
                                  f"{', '.join(config[section])}", f"{where}.{section[:-1]}")
        undefined = [method for method in ablation["methods"] if method not in config["methods"]]
        if undefined:
            raise ConfigError(f"{', '.join(map(repr, undefined))} not defined under methods; defined: "
                              f"{', '.join(config['methods'])}", f"{where}.methods")
        for setup_name, setup in ablation["setups"].items():
            at = f"{where}.setups.{setup_name}"
            setup["explainer"] = setup["explainer"] or config["explainers"][0]
            if setup["explainer"] not in config["explainers"]:
                raise ConfigError(f"{setup['explainer']!r} is not one of the config's explainers (the caches hold only "
                                  f"those); allowed: {', '.join(config['explainers'])}", f"{at}.explainer")
            for method, changes in setup["set"].items():
                run = ablation_run_name(method, setup_name)
                key = (ablation["model"], ablation["dataset"], run)
                if method not in ablation["methods"]:
                    raise ConfigError(f"not one of the ablation's methods ({', '.join(ablation['methods'])})",
                                      f"{at}.set.{method}")
                if run in config["methods"]:
                    raise ConfigError(f"its run name {run!r} is also a method's name", at)
                if variants.setdefault(key, changes) != changes:
                    raise ConfigError(f"run {run!r} of {key[0]} on {key[1]} is set differently by another ablation", at)


def _check_pretrain(config: dict[str, Any]) -> None:
    for model, pretrain in config["pretrain"].items():
        expected = pretrained_path(model)
        if model not in config["models"] or config["models"][model]["pretrained"] != expected:
            raise ConfigError(f"needs models.{model}.pretrained: {expected}", f"pretrain.{model}")
        if pretrain["dataset"] not in config["datasets"]:
            raise ConfigError(f"{pretrain['dataset']!r} is not defined under datasets", f"pretrain.{model}.dataset")


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
        if _matches(entry, model, dataset, method):
            spec.update(entry["set"])
    return spec


def _matches(entry: dict[str, Any], model: str, dataset: str, method: str) -> bool:
    """Whether an ``overrides`` entry applies to the run (an absent list matches all)."""
    return all(name in entry.get(section, [name])
               for section, name in (("models", model), ("datasets", dataset), ("methods", method)))


def pretrained_path(model: str) -> str:
    """Where the workflow writes the weights of a model it pretrains itself."""
    return f"results/pretrained/{model}.pt"


def validate_spec(kind: str, spec: Any, source: str) -> dict[str, Any]:
    """Validate a ``model``, ``dataset``, ``method`` or ``synthetic`` spec; returns it with defaults.

    Raises:
        ConfigError: one line, ``<source>: <key path>: <what is wrong>``.
    """
    schema = config_schema()
    sub = {"$defs": schema["$defs"], **schema["$defs"][kind]}
    try:
        check_schema(spec, sub)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return _fill_defaults(copy.deepcopy(spec), sub, schema)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: naming the file (and, for a YAML syntax error, the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    return validate_config(read_yaml(path) or {}, source=str(path))


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``. Raises ConfigError ``<path>:<line>:<column>: <problem>`` for a syntax error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
