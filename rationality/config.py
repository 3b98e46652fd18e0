"""Configuration: the JSON Schema in ``config.schema.yaml``, applied with defaults, with clear errors."""

from __future__ import annotations

import copy
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

    Also checks that every name under ``runs`` exists and that each run's model can run its method.

    Raises:
        ConfigError: listing every violation with its key path.
    """
    schema = config_schema()
    _check(config, schema, source)
    filled = _fill_defaults(copy.deepcopy(config), schema, schema)
    grids = filled["runs"] if isinstance(filled["runs"], list) else [filled["runs"]]
    entries = [(f"runs[{i}]", grid) for i, grid in enumerate(grids)]
    entries += [(f"overrides[{i}]", entry) for i, entry in enumerate(filled["overrides"])]
    for where, entry in entries:
        for section in ("models", "datasets", "methods"):
            unknown = [name for name in entry.get(section, []) if name not in filled[section]]
            if unknown:
                raise ConfigError(f"{source} is invalid:\n  {where}.{section}: {unknown} not defined under {section}")
    _check_ood(filled, source)
    from rationality.methods.base import check_runs_supported  # imports torch: only once the schema holds

    check_runs_supported(filled["models"], filled["methods"], run_triples(filled), source)
    for model, pretrain in filled["pretrain"].items():
        expected = pretrained_path(model)
        if model not in filled["models"] or filled["models"][model]["pretrained"] != expected:
            raise ConfigError(f"{source} is invalid:\n  pretrain.{model}: needs models.{model}.pretrained: {expected}")
        if pretrain["dataset"] not in filled["datasets"]:
            raise ConfigError(f"{source} is invalid:\n  pretrain.{model}.dataset: {pretrain['dataset']!r} "
                              f"is not defined under datasets")
    return filled


def _check_ood(config: dict[str, Any], source: str) -> None:
    from rationality.data.corruptions import CORRUPTIONS, IMAGENET_C_CORRUPTIONS

    for name, ood in config["ood"].items():
        problems = []
        if name in config["datasets"]:
            problems.append("is also the name of a dataset")
        if ood["dataset"] not in config["datasets"]:
            problems.append(f"dataset {ood['dataset']!r} is not defined under datasets")
        if ood["source"] == "imagenet_c" and "root" not in ood:
            problems.append("source imagenet_c needs root (ImageNet-C's directory)")
        known = IMAGENET_C_CORRUPTIONS if ood["source"] == "imagenet_c" else CORRUPTIONS
        unknown = [c for c in ood["corruptions"] if c not in known]
        if unknown:
            problems.append(f"unknown corruptions {unknown} for source {ood['source']}; known: {list(known)}")
        if problems:
            raise ConfigError(f"{source} is invalid:\n  ood.{name}: " + "; ".join(problems))


def ood_dataset_spec(config: dict[str, Any], name: str, corruption: str, severity: int) -> dict[str, Any]:
    """The dataset spec of one (out-of-distribution set, corruption, severity).

    Its samples are those of the clean dataset's test split: same ids, labels and masks.
    """
    ood = config["ood"][name]
    clean = config["datasets"][ood["dataset"]]
    options = dict(clean.get("options", {}))
    if ood["source"] == "imagenet_c":  # the imagenet_c reader applies ImageNet-C's own 256/224 pre-crop
        options.pop("pre_crop", None)
        return {**clean, "reader": "imagenet_c", "root": ood["root"],
                "options": {**options, "corruption": corruption, "severity": severity, "val_root": clean["root"]}}
    return {**clean, "reader": "corrupted",
            "options": {"base": {"reader": clean["reader"], "options": options}, "corruption": corruption,
                        "severity": severity, "seed": ood["seed"]}}


def dataset_spec_for(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The spec of a dataset, or of an out-of-distribution set's first (corruption, severity): what
    its masks are built from (masks do not depend on the corruption)."""
    if name in config["datasets"]:
        return config["datasets"][name]
    ood = config["ood"][name]
    return ood_dataset_spec(config, name, ood["corruptions"][0], ood["severities"][0])


def ood_runs(config: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """(model, ood set, method, corruption, severity) for every run whose dataset has ood sets."""
    return [(model, name, method, corruption, severity)
            for model, dataset, method in run_triples(config)
            for name, ood in config["ood"].items() if ood["dataset"] == dataset
            for corruption in ood["corruptions"] for severity in ood["severities"]]


def run_triples(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every (model, dataset, method) of ``runs`` (a grid or a list of grids), once, in config order."""
    grids = config["runs"] if isinstance(config["runs"], list) else [config["runs"]]
    triples = [(model, dataset, method) for grid in grids
               for model in grid["models"] for dataset in grid["datasets"] for method in grid["methods"]]
    return list(dict.fromkeys(triples))


def method_spec_for(config: dict[str, Any], model: str, dataset: str, method: str) -> dict[str, Any]:
    """The method spec of one run: ``methods.<method>`` with every matching ``overrides`` entry applied."""
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
