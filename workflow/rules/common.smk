"""Config validation, wildcard constraints and the input/param functions every rule shares.

Rules stay declarative: each param is a named function of the wildcards returning exactly what
the rule's command reads, so a change to anything else never re-runs it.
"""

import json
import os
import re

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from rationality.config import (
    ablation_cells,
    ablation_triples,
    dataset_spec_for,
    method_spec_for,
    ood_dataset_spec,
    ood_runs,
    pretrained_path,
    run_grids,
    run_method,
    run_seed,
    run_seeds,
    run_triples,
    seed_triples,
    validate_config,
)
from rationality.errors import ConfigError
from rationality.schema import CLEAN

min_version("8.20")


def config_source():
    """The config's files as given (the demo's when none is), and --config when it overrides them."""
    files = [os.path.relpath(path) for path in workflow.overwrite_configfiles] or [os.path.relpath(DEMO_CONFIG)]
    return " + ".join(files + (["--config"] if workflow.config_settings.config else []))


# The whole config is checked here, before any job can start (or delete an output); a fault ends the
# run with one line naming the key and what is allowed there. A job that a cluster executor starts as
# a Snakemake process of its own skips the registry checks the run that submitted it has done.
try:
    config.update(validate_config(config, source=config_source(), deep=workflow.is_main_process))
except ConfigError as error:
    raise WorkflowError(str(error)) from None


#: A trained run's directory and checkpoint; rule outputs and inputs use these.
CHECKPOINT_DIR = "results/checkpoints/{model}/{dataset}/{method}"
CHECKPOINT = CHECKPOINT_DIR + "/checkpoint.pt"
#: The stores' paths, one pattern each: rule outputs and every input list format these.
CACHE = "results/cache/{model}/{dataset}/{method}.zarr"
SCORES = "results/scores/{model}/{dataset}/{method}.zarr"
OOD_CACHE = "results/cache/{model}/{ood}/{method}/{corruption}-s{severity}.zarr"
OOD_SCORES = "results/scores/{model}/{ood}/{method}/{corruption}-s{severity}.zarr"


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or "$^"


def _names(section):
    return _alternatives(config[section])


def _corruptions():
    """Every configured corruption, and ``none`` (severity 0: the clean images in the set's frame)."""
    return _alternatives(sorted({CLEAN} | {c for ood in config["ood"].values() for c in ood["corruptions"]}))


wildcard_constraints:
    model=_names("models"),
    dataset=_alternatives([*config["datasets"], *config["ood"]]),
    ood=_names("ood"),
    corruption=_corruptions(),
    severity=r"[0-5]",
    method=_alternatives([*config["methods"], *(run[2] for run in [*ablation_triples(config), *seed_triples(config)])]),
    ablation=_names("ablations"),
    synthetic=_names("synthetic") or "$^",
    geometry=r"r\d+c\d+",
    grid=r"\d+x\d+",
    split=r"[^/]+",


def synthetic_root(name):
    return f"results/data/{name}"


def as_json(value):
    return json.dumps(value, sort_keys=True)


def synthetic_spec(wildcards):
    return as_json(config["synthetic"][wildcards.synthetic])


def model_spec(wildcards):
    return as_json(config["models"][wildcards.model])


def clean_dataset(name):
    """The config entry of a dataset, or of the clean dataset an out-of-distribution set corrupts."""
    return config["datasets"][config["ood"][name]["dataset"] if name in config["ood"] else name]


def dataset_spec(wildcards):
    return as_json(dataset_spec_for(config, wildcards.dataset))


def ood_spec(wildcards):
    return as_json(ood_dataset_spec(config, wildcards.ood, wildcards.corruption, int(wildcards.severity)))


def ood_checkpoint(wildcards):
    clean = config["ood"][wildcards.ood]["dataset"]
    return CHECKPOINT.format(model=wildcards.model, dataset=clean, method=wildcards.method)


def checkpoint_dir(wildcards):
    return CHECKPOINT_DIR.format(model=wildcards.model, dataset=wildcards.dataset, method=wildcards.method)


def method_spec(wildcards):
    return as_json(method_spec_for(config, wildcards.model, wildcards.dataset, wildcards.method))


def method_inputs(wildcards):
    """Files the run's method reads besides the model and the dataset (an external model's weights), so
    that a changed file re-runs it."""
    from rationality.methods import create_method  # imports torch: only when a train job is planned

    return create_method(method_spec_for(config, wildcards.model, wildcards.dataset, wildcards.method)).input_files()


def train_split(wildcards):
    return config["datasets"][wildcards.dataset]["train_split"]


def test_split(wildcards):
    return clean_dataset(wildcards.dataset)["test_split"]


def ood_test_split(wildcards):
    return clean_dataset(wildcards.ood)["test_split"]


def generated_dataset(dataset):
    """The generated dataset's index when ``dataset`` is one of the workflow's synthetic ones."""
    root = clean_dataset(dataset)["root"].rstrip("/")
    return [f"{synthetic_root(name)}/samples.csv" for name in config["synthetic"] if root == synthetic_root(name)]


def dataset_inputs(wildcards):
    return generated_dataset(wildcards.dataset)


def ood_inputs(wildcards):
    return generated_dataset(wildcards.ood)


def model_inputs(wildcards):
    """The model's weights when the workflow pretrains it itself."""
    return [pretrained_path(wildcards.model)] if wildcards.model in config["pretrain"] else []


def pretrain_inputs(wildcards):
    return generated_dataset(config["pretrain"][wildcards.model]["dataset"])


def pretrain_base_spec(wildcards):
    return as_json({**config["models"][wildcards.model], "pretrained": None})


def pretrain_spec(wildcards):
    return as_json(config["pretrain"][wildcards.model])


def pretrain_dataset(wildcards):
    return config["pretrain"][wildcards.model]["dataset"]


def pretrain_split(wildcards):
    return config["pretrain"][wildcards.model]["split"]


def pretrain_dataset_spec(wildcards):
    return as_json(config["datasets"][pretrain_dataset(wildcards)])


def model_geometry(model):
    size = config["models"][model]["input_size"]
    return f"r{size}c{size}"


def model_grid(model):
    side = config["models"][model]["input_size"] // config["models"][model]["patch_size"]
    return f"{side}x{side}"


def masks_for_cache(wildcards):
    """The test split's mask store in the model's geometry; an out-of-distribution set's is its own (same
    masks as its clean dataset's, unless ImageNet-C's pre-crop frames them differently)."""
    name = getattr(wildcards, "ood", None) or wildcards.dataset
    return f"results/masks/{name}/{clean_dataset(name)['test_split']}-{model_geometry(wildcards.model)}.zarr"


def projections_for_cache(wildcards):
    """The projections of :func:`masks_for_cache` onto the model's token grid."""
    return masks_for_cache(wildcards).removesuffix(".zarr") + f"-grid{model_grid(wildcards.model)}.zarr"


def all_scores():
    """The scores stores of the runs grids, and of their runs with the extra seeds."""
    return [SCORES.format(model=model, dataset=dataset, method=method)
            for model, dataset, method in [*run_triples(config), *seed_triples(config)]]


def metric_thresholds():
    """The other metrics' thresholds, for every table and figure that applies one (`--metric-thresholds`)."""
    return as_json(config["scoring"]["thresholds"])


def train_seed(wildcards):
    """The seed of a run: the first of ``seeds`` (or ``seed``), or an extra seed's run's own."""
    return run_seed(config, wildcards.method)


def store_method_name(wildcards):
    """The method name a run's stores record: ``lp`` for the run ``lp@seed1`` (the store records its seed)."""
    return run_method(config, wildcards.method)


def all_ood_scores():
    return [OOD_SCORES.format(model=model, ood=ood, method=method, corruption=corruption, severity=severity)
            for model, ood, method, corruption, severity in ood_runs(config)]


def max_batch_option(wildcards):
    """The train command's per-process batch limit (gradient accumulation above it), or nothing."""
    limit = config["train"]["max_batch_per_step"]
    return "" if limit is None else f" --max-batch-per-step {limit}"


def made_with_labels(**labels):
    """Report labels of an output: ``labels`` (wildcards expanded by Snakemake), then the options the
    output was made with, read from the job's first output when the report is built (the captions
    show them, so a caption describes its file even after the config has changed)."""

    def labels_of(wildcards, output):
        from rationality.report.made_with import read_made_with

        return {**labels, **read_made_with(output[0])}

    return labels_of


def train_launcher(wildcards):
    """The command that starts training: the CLI, or torchrun with one process per GPU."""
    processes = config["train"]["nproc_per_node"]
    if processes == 1:
        return "rationality"
    return f"torchrun --standalone --nproc-per-node {processes} -m rationality"


# Resources: what a job asks of the machine or the scheduler, per stage of config["resources"]. They
# never trigger a re-run, and neither do the run settings passed as resources below (batch size,
# device, worker counts, launcher), which change how a job runs, not what it computes.


def stage_threads(stage):
    return config["resources"][stage]["threads"]


def stage_mem_mb(stage):
    return config["resources"][stage]["mem_mb"]


def stage_gpus(stage):
    return config["resources"][stage]["gpu"]


def local_gpu_jobs(stage):
    """1 for a job of a stage that uses GPUs, else 0: what profiles/default caps on a local machine."""
    return int(stage_gpus(stage) > 0)


def stage_runtime(stage):
    """The stage's runtime in minutes, times the attempt: a retried job (after hitting its time limit)
    asks for more time, and training and inference resume where the last attempt stopped."""
    minutes = config["resources"][stage]["runtime"]

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime
