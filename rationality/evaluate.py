"""``rationality evaluate``: one fine-tuned model on one dataset, without writing a config.

The command writes the config of the run, ``<out>/config.yaml``: the base model, the dataset, and two
methods, zero-shot of the base model (``zs``) and the model under evaluation (``kind: external``,
see :mod:`rationality.methods.external`). Before anything runs it builds the model, loads the files
into it and reads the dataset's test split, so a weights file or class list that does not fit fails
at once with the usual one-line error. Then it runs the workflow's own stages with Snakemake in
``<out>`` (the same rules and code as any config: masks, checkpoints, caches, scores, tables and
figures under ``<out>/results/``) and prints the PT / IR table. The config stands alone, so the run
can be continued, re-thresholded or extended with Snakemake (:func:`snakemake_command`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import rationality
from rationality import __version__
from rationality.errors import ConfigError
from rationality.report.tables import format_table, primary_rows

#: The run name of zero-shot of the base model, next to the evaluated model.
ZERO_SHOT = "zs"
#: Where the workflow writes the main table, under the run directory.
TABLE = Path("results") / "tables" / "pt_ir.csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Evaluation:
    """What ``rationality evaluate`` runs (its command-line options).

    Attributes:
        model: the base model's architecture name (e.g. ``ViT-B-16-quickgelu``).
        adapter: its registered adapter.
        pretrained: the base weights (a tag, a file) or None for a seeded random model.
        data: the dataset's root directory; ``reader`` its registered reader, ``reader_options``
            the reader's options, ``split`` the split to evaluate.
        out: the run directory (config, results).
        method: the external method's spec without ``kind`` (``weights``, ``head``, ...).
        name: the evaluated model's run name (default: its weights' or head's file stem).
        model_options: adapter options.
        settings: top-level config keys (threshold, explainers, infer, train, seed).
    """

    model: str
    adapter: str
    pretrained: str | None
    data: Path
    reader: str
    split: str
    out: Path
    method: dict[str, Any]
    name: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    reader_options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def run_name(self) -> str:
        """The evaluated model's name in the config (its methods key)."""
        source = self.name or Path(self.method.get("weights") or self.method.get("head") or "external").stem
        name = safe_name(source)
        if name == ZERO_SHOT:
            raise ConfigError(f"--name {name!r} is the zero-shot run's; choose another")
        return name


def safe_name(text: str) -> str:
    """A config name usable in paths and wildcards: runs of other characters become ``-``."""
    return _UNSAFE.sub("-", text).strip("-.") or "run"


def _absolute(path: str | None) -> str | None:
    """An existing file or directory as an absolute path; anything else (a tag, None) as it is."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path


def build_config(evaluation: Evaluation) -> dict[str, Any]:
    """The config of an evaluation, checked by building what it names.

    Builds the base model (for its input size and patch size), reads the dataset (the split must
    exist and have masks), and loads the external files into the model: what would fail in a
    workflow job fails here, before any job starts.

    Raises:
        ConfigError, DataError: the first thing that does not fit, naming the file or option.
    """
    from rationality.config import validate_config
    from rationality.data.base import create_dataset
    from rationality.methods import create_method
    from rationality.models import create_adapter

    run_name = evaluation.run_name()
    data = evaluation.data.resolve()
    reader = create_dataset(evaluation.reader, data, **evaluation.reader_options)
    if evaluation.split not in reader.splits:
        raise ConfigError(f"{data}: has no split {evaluation.split!r} (splits: {', '.join(reader.splits)}); set --split")
    if evaluation.split not in reader.mask_splits:
        raise ConfigError(f"{data}: split {evaluation.split!r} has no masks; evaluating needs them")
    reader.samples(evaluation.split)
    method = {"kind": "external", **{key: _absolute(value) if key in ("weights", "head") else value
                                     for key, value in evaluation.method.items()}}
    if isinstance(method.get("head_classes"), str):
        method["head_classes"] = _absolute(method["head_classes"])
    for key in ("weights", "head", "head_classes"):
        if isinstance(method.get(key), str) and not Path(method[key]).exists():
            raise ConfigError(f"{method[key]}: {key} file does not exist")
    model = {"adapter": evaluation.adapter, "name": evaluation.model, "pretrained": _absolute(evaluation.pretrained),
             "options": dict(evaluation.model_options)}
    adapter = create_adapter(model)
    model.update(input_size=adapter.geometry.crop, patch_size=adapter.geometry.crop // adapter.grid[0])
    create_method(method).build(adapter, reader.class_names)  # the files fit, or a one-line error now
    del adapter
    prompts = {key: method[key] for key in ("prompt_template",) if key in method}
    model_name, dataset_name = safe_name(evaluation.model), safe_name(data.name)
    config = {
        **evaluation.settings,
        "datasets": {dataset_name: {"reader": evaluation.reader, "root": str(data), "test_split": evaluation.split,
                                    "options": dict(evaluation.reader_options)}},
        "models": {model_name: model},
        "methods": {ZERO_SHOT: {"kind": "zero_shot", **prompts}, run_name: method},
        "runs": {"models": [model_name], "datasets": [dataset_name], "methods": [ZERO_SHOT, run_name]},
    }
    validate_config(config, source="the evaluation's config")
    return config


def snakefile() -> Path:
    """The workflow's root Snakefile, next to the package in a source checkout.

    Raises:
        ConfigError: when this installation has no workflow (a wheel without the repository).
    """
    path = Path(rationality.__file__).resolve().parents[1] / "Snakefile"
    if not path.is_file():
        raise ConfigError(f"{path}: the workflow is not installed with this package; install rationality from its "
                          f"repository (pip install -e .) to run it")
    return path


def snakemake_command(out: Path, cores: int, *extra: str) -> list[str]:
    """The Snakemake command line that runs (or, with ``-n``, plans) the evaluation in ``out``.

    The default target is every table and figure; targets and options come before ``--configfile``.
    """
    return [sys.executable, "-m", "snakemake", *extra, "--cores", str(cores), "-s", str(snakefile()),
            "--directory", str(out), "--configfile", str(out / "config.yaml")]


def write_config(config: dict[str, Any], out: Path, cores: int) -> Path:
    """Write ``out/config.yaml`` with a header saying how to continue the run in Snakemake."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    command = " ".join(["snakemake", *snakemake_command(out, cores)[3:]])
    header = (f"# Written by `rationality evaluate` (rationality {__version__}): zero-shot of the base model ({ZERO_SHOT})\n"
              f"# and the evaluated model. It stands alone; continue, re-threshold or extend the run with\n"
              f"#   {command}\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def run_evaluation(evaluation: Evaluation, cores: int, dry_run: bool = False) -> int:
    """Write the config, run the workflow in ``evaluation.out`` and print the PT / IR table.

    Returns:
        Snakemake's exit status (0 when every job succeeded).
    """
    out = evaluation.out.resolve()
    config = build_config(evaluation)
    path = write_config(config, out, cores)
    print(f"wrote {path}", flush=True)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    status = subprocess.run(snakemake_command(out, cores, *(["-n"] if dry_run else [])), env=environment).returncode
    if status or dry_run:
        if status:
            print(f"rationality evaluate: the workflow failed (exit status {status}); the failing job's log is named "
                  f"above, under {out / 'results' / 'logs'}", file=sys.stderr)
        return status
    print(format_table(primary_rows(pd.read_csv(out / TABLE))))
    print(f"tables (every localisation metric): {out / 'results' / 'tables'}; figures: {out / 'results' / 'figures'}; "
          f"config: {path}")
    return 0
