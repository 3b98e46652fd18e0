"""Every run a config trains, with every hyper-parameter it trains with: ``rationality config resolve``.

The rows come from the workflow's own resolution, so the command and the workflow cannot disagree:
config files merge in order as Snakemake merges several ``--configfile`` files (its own
``update_config``: mappings merge key by key, everything else is replaced), the merged config is
validated and filled with defaults (:func:`~rationality.config.validate_config`), the runs are the
``runs`` grids (:func:`~rationality.config.run_triples`), their extra seeds'
(:func:`~rationality.config.seed_triples`) and the ablations' own runs
(:func:`~rationality.config.ablation_triples`), each method spec is
:func:`~rationality.config.method_spec_for` built into its method (so unset hyper-parameters show
their defaults), and the split of each optimiser step is the training loop's own
:meth:`~rationality.methods._training.TrainingOptions.step_plan` for ``train.nproc_per_node``
and ``train.max_batch_per_step``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from rationality.config import (
    ablation_cells,
    ablation_triples,
    method_spec_for,
    run_seed,
    run_triples,
    seed_triples,
    validate_config,
)
from rationality.errors import ConfigError

FORMATS = ("markdown", "csv", "json")
#: The columns every row has, in order; every other hyper-parameter follows (markdown: in ``other``).
COLUMNS = ["model", "dataset", "method", "ablation", "kind", "optimizer", "lr", "batch_size", "processes",
           "batch_per_step", "accumulation_steps", "epochs", "shots", "seed"]
#: Hyper-parameters shown in :data:`COLUMNS` or implied by them.
_SHOWN = {"kind", "optimizer", "lr", "batch_size", "epochs", "shots"}


def load_config_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Merge config files in order, as Snakemake merges several ``--configfile`` files, and validate.

    Raises:
        ConfigError: a file is missing or not a YAML mapping, or the merged config is invalid.
    """
    from snakemake.utils import update_config

    merged: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"{path}: config file does not exist")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(content).__name__}")
        update_config(merged, content)
    return validate_config(merged, source=" + ".join(map(str, paths)))


def resolved_runs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trained run of a validated config: :data:`COLUMNS`, then every other hyper-parameter.

    Rows follow the workflow's order: the ``runs`` grids, their runs with extra ``seeds``, then the
    ablations' own runs. A zero-shot
    run trains nothing: its optimiser and batch columns are None.

    Raises:
        ConfigError: a run's method spec is invalid, or its batch cannot be split as configured.
    """
    from rationality.methods import create_method
    from rationality.methods._training import TrainingOptions

    ablations: dict[tuple[str, str, str], list[str]] = {}
    for cell in ablation_cells(config):
        if cell.changes:
            ablations.setdefault(cell.run, []).append(f"{cell.ablation}.{cell.setup}")
    processes = config["train"]["nproc_per_node"]
    rows = []
    for model, dataset, name in [*run_triples(config), *seed_triples(config), *ablation_triples(config)]:
        where = f"run ({model}, {dataset}, {name})"
        try:
            method = create_method(method_spec_for(config, model, dataset, name))
            plan = (method.step_plan(processes, config["train"]["max_batch_per_step"])
                    if isinstance(method, TrainingOptions) else None)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        hyper = method.to_dict()
        row = {"model": model, "dataset": dataset, "method": name,
               "ablation": ", ".join(dict.fromkeys(ablations.get((model, dataset, name), []))) or None,
               "kind": hyper["kind"], "optimizer": hyper.get("optimizer"), "lr": hyper.get("lr"),
               "batch_size": hyper.get("batch_size"), "processes": processes if plan else None,
               "batch_per_step": -(-plan.micro_batch // processes) if plan else None,
               "accumulation_steps": plan.micro_steps if plan else None, "epochs": hyper.get("epochs"),
               "shots": hyper.get("shots"), "seed": run_seed(config, name)}
        rows.append({**row, **{key: value for key, value in hyper.items() if key not in _SHOWN}})
    return rows


def format_value(value: Any) -> str:
    """A cell as text: floats in the shortest exact form with a plain exponent (``1e-5``), None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa.removesuffix('.0')}e{int(exponent)}"
        return text
    return str(value)


def _other_value(value: Any) -> str:
    """A hyper-parameter in the ``other`` column: text quoted (``""`` shows an empty one), None as null."""
    return json.dumps(value) if isinstance(value, (str, bool)) or value is None else format_value(value)


def format_runs(rows: list[dict[str, Any]], fmt: str = "markdown") -> str:
    """The rows as a Markdown table (:data:`COLUMNS` without empty ones, then ``other``: the remaining
    hyper-parameters as ``key=value``), a CSV (a column per hyper-parameter) or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in COLUMNS))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS + extra)
        writer.writerows([[format_value(row.get(key)) for key in COLUMNS + extra] for row in rows])
        return buffer.getvalue()
    if fmt != "markdown":
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    columns = [key for key in COLUMNS if key in ("model", "dataset", "method")
               or any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(columns + ["other"]) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        other = ", ".join(f"{key}={_other_value(row[key])}" for key in extra if key in row)
        cells = [format_value(row.get(key)) for key in columns] + [other]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
