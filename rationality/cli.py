"""The ``rationality`` command: one subcommand per workflow stage, plus re-scoring.

Specs (model, dataset, method, synthetic data) are passed as JSON (or YAML) text, exactly as they
appear under the config's ``models``, ``datasets``, ``methods`` and ``synthetic`` sections, and are
validated against the same schema. Bad inputs end with a one-line error naming the file and fault.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from rationality import __version__
from rationality.errors import ConfigError, RationalityError

#: Commands whose numbers depend on torch's kernels and threads: their logs start with them.
TORCH_COMMANDS = ("pretrain", "train", "infer")


def _spec(kind: str, option: str):
    def parse(text: str) -> dict[str, Any]:
        from rationality.config import validate_spec

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise argparse.ArgumentTypeError(f"{option} is not valid JSON/YAML: {exc}") from exc
        try:
            return validate_spec(kind, value, source=f"{option} spec")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = f"{kind} spec"
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _json(option: str):
    def parse(text: str) -> Any:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise argparse.ArgumentTypeError(f"{option} is not valid JSON/YAML: {exc}") from exc

    parse.__name__ = option
    return parse


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML (``5``, ``true``, ``[a, b]``, text)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"the value of {key} is not valid YAML: {exc}") from exc


def _grids(text: str) -> list[dict[str, list[str]]]:
    grids = _json("--grids")(text)
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not all(
            isinstance(g, dict) and all(isinstance(g.get(k), list) for k in ("models", "datasets", "methods"))
            for g in grids):
        raise argparse.ArgumentTypeError("--grids must be a list of {models: [...], datasets: [...], methods: [...]}")
    return grids


def _threshold(text: str) -> float:
    """An RMA threshold: a finite number in [0, 1] (NaN would count no evidence as valid)."""
    from rationality.scoring.metrics import check_threshold

    try:
        return check_threshold(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1], got {text!r}") from None


def _confidence(text: str) -> float:
    """A confidence level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def _dataset(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": args.dataset_name, **args.dataset}


def _cmd_synth(args: argparse.Namespace) -> None:
    from rationality.data.synthetic import generate_synthetic_dataset

    spec = args.spec
    generate_synthetic_dataset(Path(args.out), samples_per_class=spec["samples_per_class"],
                               image_size=tuple(spec["image_size"]), background_bias=spec["background_bias"],
                               seed=spec["seed"])
    print(f"wrote {args.out}")


def _cmd_masks(args: argparse.Namespace) -> None:
    from rationality.data.geometry import Geometry
    from rationality.data.masks import build_mask_store

    print(f"wrote {build_mask_store(_dataset(args), args.split, Geometry.from_name(args.geometry), args.out)}")


def _cmd_datasets_check(args: argparse.Namespace) -> int:
    from rationality.config import load_config
    from rationality.data.check import check_datasets, check_ood_sets, format_ood_report, format_report

    config = load_config(args.config)
    reports = check_datasets(config, images=args.images)
    ood_reports = check_ood_sets(config, images=args.images)
    for report in reports:
        print(format_report(report))
    for ood_report in ood_reports:
        print(format_ood_report(ood_report))
    failed = [report.name for report in [*reports, *ood_reports] if report.problems]
    checked = f"checked {len(reports)} datasets" + (f" and {len(ood_reports)} out-of-distribution sets"
                                                    if ood_reports else "")
    print(f"{checked}: " + (f"problems in {', '.join(failed)}" if failed else "all OK"))
    return 1 if failed else 0


def _cmd_config_resolve(args: argparse.Namespace) -> None:
    from rationality.resolve import format_runs, load_config_files, resolved_runs

    print(format_runs(resolved_runs(load_config_files(args.configs)), args.format), end="")


def _cmd_list(args: argparse.Namespace) -> None:
    from rationality.catalog import catalog, format_catalog

    print(format_catalog(catalog(args.kind)))


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from rationality.pretrain import pretrain_image_text

    spec = args.spec
    path = pretrain_image_text(args.model, _dataset(args), args.split, args.out, epochs=spec["epochs"],
                               lr=float(spec["lr"]), batch_size=spec["batch_size"], seed=args.seed)
    print(f"wrote {path}")


def _cmd_train(args: argparse.Namespace) -> None:
    from rationality.train import train_checkpoint

    path = train_checkpoint(args.model, _dataset(args), args.method, args.split, args.out, seed=args.seed,
                            device=args.device, num_workers=args.num_workers,
                            max_batch_per_step=args.max_batch_per_step)
    print(f"wrote {path}")


def _cmd_infer(args: argparse.Namespace) -> None:
    from rationality.infer import run_inference

    path = run_inference(args.checkpoint, _dataset(args), args.split, args.out, explainers=args.explainers,
                         batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                         precision=args.precision, corruption=args.corruption, severity=args.severity,
                         model_name=args.model_name, method_name=args.method_name, chunk_size=args.chunk_size)
    print(f"wrote {path}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rationality.evaluate import Evaluation, run_evaluation

    method = {"weights": args.checkpoint, "weights_of": args.checkpoint_of, "key_prefix": args.key_prefix,
              "head": args.head, "head_prefix": args.head_prefix, "head_classes": args.head_classes,
              "normalize_features": args.normalize_features, "prompt_template": args.prompt_template}
    defaults = {"weights": None, "weights_of": "model", "key_prefix": "", "head": None, "head_prefix": "",
                "head_classes": None, "normalize_features": False, "prompt_template": None}
    infer = {"device": args.device, "batch_size": args.batch_size, "num_workers": args.num_workers}
    settings = {"threshold": args.threshold, "explainers": args.explainers,
                "infer": {key: value for key, value in infer.items() if value is not None},
                "train": {"device": args.device}}
    evaluation = Evaluation(
        model=args.model, adapter=args.adapter, pretrained=None if args.pretrained == "none" else args.pretrained,
        data=Path(args.data), reader=args.reader, split=args.split, out=Path(args.out),
        method={key: value for key, value in method.items() if value != defaults[key]}, name=args.name,
        model_options=dict(args.model_option), reader_options=dict(args.data_option),
        settings={key: value for key, value in settings.items() if value is not None})
    return run_evaluation(evaluation, args.cores, dry_run=args.dry_run)


def _cmd_project_masks(args: argparse.Namespace) -> None:
    from rationality.scoring.project import parse_grid, project_mask_store

    print(f"wrote {project_mask_store(args.masks, parse_grid(args.grid), args.out)}")


def _cmd_score(args: argparse.Namespace) -> None:
    from rationality.scoring.score import ScoringOptions, score_stores

    path = score_stores(args.cache, args.masks, args.out,
                        ScoringOptions(normalization=args.normalization, metrics=tuple(args.metrics)),
                        dask_address=args.dask_address, projections_path=args.projections)
    print(f"wrote {path}")


def _metric_thresholds(text: str) -> dict[str, float]:
    """``--metric-thresholds``: a JSON/YAML mapping of registered metric names to thresholds."""
    from rationality.scoring.localisation import metric_class

    thresholds = _json("--metric-thresholds")(text) or {}
    if not isinstance(thresholds, dict) or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            for value in thresholds.values()):
        raise argparse.ArgumentTypeError("--metric-thresholds must map metric names to finite numbers, e.g. '{auc: 0.8}'")
    for name in thresholds:
        try:
            metric_class(name)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"--metric-thresholds: {exc}") from None
    return {str(name): float(value) for name, value in thresholds.items()}


def _primary_threshold(args: argparse.Namespace) -> float:
    """The threshold of the primary metric of the first scores store, for one-metric figures."""
    from rationality.report.tables import open_scores, primary_metric
    from rationality.scoring.localisation import threshold_for

    return threshold_for(primary_metric(open_scores(args.scores[:1])[0]), args.threshold, args.metric_thresholds)


def _table(args: argparse.Namespace):
    from rationality.report.tables import rationality_table

    return rationality_table(args.scores, threshold=args.threshold, undefined=args.undefined,
                             policies=args.policies, thresholds=args.metric_thresholds)


def _cmd_rescore(args: argparse.Namespace) -> None:
    from rationality.report.tables import format_table

    print(format_table(_table(args)))


def _cmd_table(args: argparse.Namespace) -> None:
    from rationality.report.layout import write_layout
    from rationality.report.tables import primary_rows

    table = _table(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    print(f"wrote {args.out} ({len(table)} rows)")
    for path in write_layout(primary_rows(table), csv=args.paper_csv, markdown=args.markdown, latex=args.latex,
                             digits=args.digits, grids=args.grids):
        print(f"wrote {path}")


def _cmd_ablation_table(args: argparse.Namespace) -> None:
    from rationality.report.ablations import write_ablation
    from rationality.report.tables import primary_rows, rationality_table

    table = primary_rows(rationality_table(args.scores, threshold=args.threshold, undefined=args.undefined,
                                           policies=[args.layout["policy"]], thresholds=args.metric_thresholds))
    for path in write_ablation(table, args.layout, csv=args.out, markdown=args.markdown, latex=args.latex,
                               digits=args.digits):
        print(f"wrote {path}")


def _cmd_bootstrap(args: argparse.Namespace) -> None:
    from rationality.report.bootstrap import bootstrap_table

    table = bootstrap_table(args.scores, threshold=args.threshold, undefined=args.undefined, policies=args.policies,
                            resamples=args.resamples, seed=args.seed, confidence=args.confidence,
                            thresholds=args.metric_thresholds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    print(f"wrote {args.out} ({len(table)} rows)")


def _bootstrap_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(undefined=args.undefined, policies=args.policies, resamples=args.resamples, seed=args.seed,
                confidence=args.confidence)


def _cmd_paired(args: argparse.Namespace) -> None:
    from rationality.report.paired import write_paired_table

    table = write_paired_table(args.scores, args.out, threshold=args.threshold, thresholds=args.metric_thresholds,
                               **_bootstrap_options(args))
    print(f"wrote {args.out} ({len(table)} rows)")


def _cmd_seeds(args: argparse.Namespace) -> None:
    from rationality.report.seeds import write_seeds_table

    for path in write_seeds_table(args.scores, args.out, markdown=args.markdown, threshold=args.threshold,
                                  thresholds=args.metric_thresholds, **_bootstrap_options(args)):
        print(f"wrote {path}")


def _cmd_claims(args: argparse.Namespace) -> None:
    from rationality.report.claims import write_claims_table

    table = write_claims_table(args.scores, args.out, **_bootstrap_options(args))
    counts = table["verdict"].value_counts()
    print(f"wrote {args.out} ({len(table)} rows: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in
                                                             ("holds", "reversed", "inconclusive")) + ")")


def _cmd_figure(args: argparse.Namespace) -> None:
    from rationality.report.gallery import write_gallery
    from rationality.report.ood import write_ood_figure
    from rationality.report.sweeps import write_start_layer_figure, write_threshold_figure

    if args.figure == "paired":
        from rationality.report.paired import write_paired_figure

        write_paired_figure(args.table, args.model, args.dataset, args.out)
    elif args.figure == "claims":
        from rationality.report.claims import write_claims_figure

        write_claims_figure(args.table, args.out)
    elif args.figure == "threshold":
        write_threshold_figure(args.scores, args.out, policy=args.policy, undefined=args.undefined)
    elif args.figure == "start-layer":
        write_start_layer_figure(args.scores, args.out, threshold=_primary_threshold(args), undefined=args.undefined)
    elif args.figure == "ood":
        write_ood_figure(args.scores, args.out, explainer=args.explainer, policy=args.policy,
                         threshold=_primary_threshold(args), undefined=args.undefined,
                         per_corruption=args.per_corruption)
    else:
        ids = write_gallery(args.scores, args.cache, args.masks, args.out, selection=args.selection,
                            count=args.samples, explainer=args.explainer, policy=args.policy,
                            threshold=_primary_threshold(args), undefined=args.undefined)
        print(f"samples: {', '.join(ids) or 'none'}")
    print(f"wrote {args.out}")


def _cmd_show(args: argparse.Namespace) -> None:
    from rationality.report.gallery import write_show

    out = args.out or f"show-{args.sample_id.replace('/', '_')}.png"
    write_show(args.sample_id, args.cache, args.masks, out, explainers=args.explainers, policies=args.policies,
               normalization=args.normalization)
    print(f"wrote {out}")


def threshold_options(command: argparse.ArgumentParser) -> None:
    """``--threshold`` (RMA's) and ``--metric-thresholds`` (the other metrics')."""
    from rationality.scoring.metrics import DEFAULT_THRESHOLD

    command.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                         help="RMA at or above which evidence is valid, in [0, 1] (the paper's 0.5)")
    command.add_argument("--metric-thresholds", type=_metric_thresholds, default={},
                         help="other metrics' thresholds as JSON, e.g. '{auc: 0.8}' (default: each metric's own)")


def _add_report_commands(commands: argparse._SubParsersAction) -> None:
    """The ``bootstrap``, ``figure``, ``show``, ``paired``, ``seeds`` and ``claims`` subcommands: tables and figures
    from stores, no model run."""
    from rationality.report.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED
    from rationality.report.gallery import DEFAULT_SAMPLES, SELECTIONS
    from rationality.report.tables import START_LAYER_POLICIES
    from rationality.scoring.metrics import UNDEFINED_POLICIES
    from rationality.scoring.rma import NORMALIZATIONS

    def scoring_options(command: argparse.ArgumentParser, threshold: bool = True) -> None:
        if threshold:
            threshold_options(command)
        command.add_argument("--undefined", choices=UNDEFINED_POLICIES, default="invalid",
                             help="how samples with undefined RMA count")

    def heatmap_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--explainer", help="whose heatmaps (default: each store's first explainer)")
        command.add_argument("--policy", choices=START_LAYER_POLICIES, default="paper", help="start-layer policy")

    bootstrap = commands.add_parser("bootstrap", help="bootstrap confidence intervals of accuracy, PT and IR (CSV)")
    bootstrap.add_argument("scores", nargs="+", help="scores stores (.zarr)")
    scoring_options(bootstrap)
    bootstrap.add_argument("--policies", nargs="+", choices=START_LAYER_POLICIES,
                           default=list(START_LAYER_POLICIES), help="start-layer policies")
    bootstrap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    bootstrap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    bootstrap.add_argument("--confidence", type=_confidence, default=DEFAULT_CONFIDENCE)
    bootstrap.add_argument("--out", required=True, help="CSV to write")
    bootstrap.set_defaults(run=_cmd_bootstrap)

    figure = commands.add_parser("figure", help="a figure (PNG) from scores stores")
    kinds = figure.add_subparsers(dest="figure", required=True)
    threshold = kinds.add_parser("threshold", help="PT and IR over the RMA threshold, per method")
    threshold.add_argument("--policy", choices=START_LAYER_POLICIES, default="paper", help="start-layer policy")
    scoring_options(threshold, threshold=False)
    start_layer = kinds.add_parser("start-layer", help="PT and IR by start layer, per method")
    scoring_options(start_layer)
    ood = kinds.add_parser("ood", help="accuracy, PT and IR against corruption severity, per method")
    heatmap_options(ood)
    scoring_options(ood)
    ood.add_argument("--per-corruption", action="store_true", help="one row per corruption instead of their mean")
    for command in (threshold, start_layer, ood):
        command.add_argument("scores", nargs="+", help="scores stores (.zarr)")
    gallery = kinds.add_parser("gallery", help="heatmaps of the same samples across methods")
    gallery.add_argument("--scores", nargs="+", required=True, help="scores stores of one model and dataset")
    gallery.add_argument("--cache", nargs="+", required=True, help="their cache stores (paired by model, method)")
    gallery.add_argument("--masks", required=True, help="the mask store of their dataset and geometry")
    gallery.add_argument("--selection", choices=SELECTIONS, default="all_correct",
                         help="all_correct: right under every method; changed: quadrant differs from zero-shot")
    gallery.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="at most this many samples")
    heatmap_options(gallery)
    scoring_options(gallery)
    paired_figure = kinds.add_parser("paired", help="Δaccuracy, ΔPT, ΔIR from zero-shot of one model and dataset")
    paired_figure.add_argument("table", help="the CSV of `rationality paired`")
    paired_figure.add_argument("--model", required=True)
    paired_figure.add_argument("--dataset", required=True)
    claims_figure = kinds.add_parser("claims", help="where each of the paper's claims holds")
    claims_figure.add_argument("table", help="the CSV of `rationality claims`")
    for command in (threshold, start_layer, ood, gallery, paired_figure, claims_figure):
        command.add_argument("--out", required=True, help="PNG to write")
    figure.set_defaults(run=_cmd_figure)

    def resampling_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("scores", nargs="+", help="scores stores (.zarr): the runs and their zero-shot run")
        command.add_argument("--undefined", choices=UNDEFINED_POLICIES, default="invalid",
                             help="how samples with undefined scores count")
        command.add_argument("--policies", nargs="+", choices=START_LAYER_POLICIES,
                             default=list(START_LAYER_POLICIES), help="start-layer policies")
        command.add_argument("--resamples", type=_positive_int, default=DEFAULT_RESAMPLES)
        command.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the resampling seed")
        command.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
        command.add_argument("--out", required=True, help="CSV to write")

    paired = commands.add_parser("paired", help="Δaccuracy, ΔPT, ΔIR of every run from zero-shot on the same "
                                                "samples, with paired bootstrap intervals (CSV)")
    resampling_options(paired)
    threshold_options(paired)
    paired.set_defaults(run=_cmd_paired)
    seeds = commands.add_parser("seeds", help="accuracy, PT, IR over training seeds: mean ± sd and pooled intervals")
    resampling_options(seeds)
    threshold_options(seeds)
    seeds.add_argument("--markdown", help="also write the primary metric's rows as Markdown")
    seeds.set_defaults(run=_cmd_seeds)
    claims = commands.add_parser("claims", help="the paper's claims (C1 PT down, C2 IR up, C3 accuracy up) under "
                                                "every metric, threshold, normalisation, explainer and start layer")
    resampling_options(claims)
    claims.set_defaults(run=_cmd_claims)

    show = commands.add_parser("show", help="one sample's heatmaps across cache stores (PNG)")
    show.add_argument("sample_id")
    show.add_argument("--cache", nargs="+", required=True, help="cache stores (.zarr), one column each")
    show.add_argument("--masks", required=True, help="mask store (.zarr) holding the sample")
    show.add_argument("--explainers", nargs="+", help="rows' explainers (default: all)")
    show.add_argument("--policies", nargs="+", choices=START_LAYER_POLICIES, default=list(START_LAYER_POLICIES),
                      help="rows' start-layer policies")
    show.add_argument("--normalization", choices=NORMALIZATIONS, default="minmax", help="for the RMA captions")
    show.add_argument("--out", help="PNG to write (default: show-<sample id>.png, a / in the id as _)")
    show.set_defaults(run=_cmd_show)


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand: a model fine-tuned elsewhere on one dataset, through the workflow."""
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a model fine-tuned elsewhere on a dataset next to zero-shot of its base model: "
                         "writes <out>/config.yaml, runs the workflow's stages in <out>, prints PT / IR")
    model = evaluate.add_argument_group("the base model (architecture and everything the checkpoint leaves as it is)")
    model.add_argument("--model", required=True, help="its architecture, e.g. ViT-B-16-quickgelu")
    model.add_argument("--adapter", default="open_clip", help="its model adapter (default open_clip)")
    model.add_argument("--pretrained", required=True,
                       help="its weights: a pretrained tag (openai), a file, or none (a seeded random model)")
    model.add_argument("--model-option", action="append", type=_assignment, default=[], metavar="KEY=VALUE",
                       help="an adapter option (the value is read as YAML); repeat for several")
    weights = evaluate.add_argument_group("the fine-tuned model (kind: external)")
    weights.add_argument("--checkpoint", help="fine-tuned weights: the whole model's state dict (.pt, .safetensors, "
                                              "a save_pretrained directory)")
    weights.add_argument("--checkpoint-of", default="model",
                         help="what --checkpoint holds: model (default; both towers) or image_tower (that alone)")
    weights.add_argument("--key-prefix", default="", help="read only the keys starting with it, without it "
                                                          "(e.g. module.)")
    weights.add_argument("--head", help="a linear head: a file with weight [C, D] and bias [C] on the image embedding "
                                        "(default: a prompt head of the model's text tower)")
    weights.add_argument("--head-prefix", default="", help="the head's keys start with it (e.g. fc.)")
    weights.add_argument("--head-classes", help="a text file naming the class of each head row, in order (default: "
                                                "the dataset's classes in its order)")
    weights.add_argument("--normalize-features", action="store_true", help="the head takes L2-normalised embeddings")
    weights.add_argument("--prompt-template", help='prompts of the class names (default "a photo of a {}.")')
    weights.add_argument("--name", help="the fine-tuned model's name in tables (default: its file's stem)")
    data = evaluate.add_argument_group("the dataset")
    data.add_argument("--data", required=True, help="its root directory")
    data.add_argument("--reader", default="folder", help="its reader (default folder; coco, cub, ...)")
    data.add_argument("--data-option", action="append", type=_assignment, default=[], metavar="KEY=VALUE",
                      help="a reader option (the value is read as YAML), e.g. annotations=instances.json")
    data.add_argument("--split", default="test", help="the split to evaluate (default test)")
    run = evaluate.add_argument_group("the run")
    run.add_argument("--out", required=True, help="the run's directory: config.yaml and results/")
    run.add_argument("--explainers", nargs="+", help="default: generic_attention attention_gradient")
    run.add_argument("--threshold", type=_threshold, help="RMA at or above which evidence is valid (default 0.5)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--batch-size", type=_positive_int, help="images per pass of the GPU stage (default 32)")
    run.add_argument("--num-workers", type=int, help="image-loading processes (default 0)")
    run.add_argument("--cores", type=_positive_int, default=os.cpu_count() or 1,
                     help="Snakemake's --cores (default: every CPU)")
    run.add_argument("--dry-run", action="store_true", help="write the config and list the jobs; run nothing")
    evaluate.set_defaults(run=_cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    from rationality.precision import PRECISIONS
    from rationality.report.tables import START_LAYER_POLICIES
    from rationality.scoring.metrics import UNDEFINED_POLICIES
    from rationality.scoring.rma import NORMALIZATIONS
    from rationality.scoring.score import DEFAULT_METRICS

    parser = argparse.ArgumentParser(prog="rationality", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rationality {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def dataset_options(command: argparse.ArgumentParser, split_help: str) -> None:
        command.add_argument("--dataset-name", required=True, help="the dataset's name in the config")
        command.add_argument("--dataset", required=True, type=_spec("dataset", "--dataset"),
                             help="dataset spec: {reader, root, options}")
        command.add_argument("--split", required=True, help=split_help)

    synth = commands.add_parser("synth", help="generate a seeded synthetic dataset with object masks")
    synth.add_argument("--spec", required=True, type=_spec("synthetic", "--spec"),
                       help="{samples_per_class: {split: n}, image_size: [w, h], background_bias, seed}")
    synth.add_argument("--out", required=True, help="dataset directory to write")
    synth.set_defaults(run=_cmd_synth)

    masks = commands.add_parser("masks", help="write a split's masks in a model-input geometry")
    dataset_options(masks, "split to transform")
    masks.add_argument("--geometry", required=True,
                       help="r<resize>c<crop> (e.g. r224c224), optionally after a pre-crop: p256c224-r224c224")
    masks.add_argument("--out", required=True, help="mask store (.zarr) to write")
    masks.set_defaults(run=_cmd_masks)

    datasets = commands.add_parser("datasets", help="inspect the datasets of a config")
    datasets_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    check = datasets_commands.add_parser(
        "check", help="open every configured dataset, count images per split and class, load every mask, "
                      "report problems (exit status 1 if any)")
    check.add_argument("config", help="config YAML (e.g. config/config.yaml)")
    check.add_argument("--images", action="store_true", help="also decode every image (slow)")
    check.set_defaults(run=_cmd_datasets_check)

    config_command = commands.add_parser("config", help="inspect a workflow config")
    config_commands = config_command.add_subparsers(dest="config_command", required=True)
    resolve = config_commands.add_parser(
        "resolve", help="every run the workflow would train, one row each, with every hyper-parameter it uses")
    resolve.add_argument("configs", nargs="+", metavar="CONFIG",
                         help="config YAML files, merged in order as several Snakemake --configfile files")
    resolve.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    resolve.set_defaults(run=_cmd_config_resolve)

    listing = commands.add_parser("list", help="what the registries hold: model families, methods, explainers, datasets, "
                                               "localisation metrics")
    listing.add_argument("kind", choices=["models", "methods", "explainers", "datasets", "metrics"])
    listing.set_defaults(run=_cmd_list)

    pretrain = commands.add_parser("pretrain", help="image-text pretraining of a small random model (demo)")
    pretrain.add_argument("--model", required=True, type=_spec("model", "--model"), help="model spec")
    pretrain.add_argument("--spec", required=True, type=_spec("pretrain", "--spec"),
                          help="{dataset, split, epochs, lr, batch_size}")
    dataset_options(pretrain, "split to pretrain on")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--out", required=True, help="open_clip state dict (.pt) to write")
    pretrain.set_defaults(run=_cmd_pretrain)

    train = commands.add_parser("train", help="adapt a model with one method; write a checkpoint")
    train.add_argument("--model", required=True, type=_spec("model", "--model"), help="model spec")
    train.add_argument("--method", required=True, type=_spec("method", "--method"), help="method spec")
    dataset_options(train, "training split")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: each process's GPU)")
    train.add_argument("--num-workers", type=int, default=0, help="image-loading processes")
    train.add_argument("--max-batch-per-step", type=_positive_int, default=None,
                       help="most images per process and pass; a larger batch_size is accumulated over micro-steps")
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.set_defaults(run=_cmd_train)

    infer = commands.add_parser("infer", help="logits and ground-truth heatmaps into a cache store")
    infer.add_argument("--checkpoint", required=True)
    dataset_options(infer, "split to explain")
    infer.add_argument("--explainers", nargs="+", default=["generic_attention"])
    infer.add_argument("--batch-size", type=int, default=32)
    infer.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    infer.add_argument("--num-workers", type=int, default=0, help="image-loading processes")
    infer.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32; tf32 matrix products, or bf16/fp16 autocast (GPU; change heatmaps slightly)")
    infer.add_argument("--chunk-size", type=int,
                       help="samples per store chunk and resume step (default: the stores' chunk, 1024)")
    infer.add_argument("--corruption", default="none", help="the images' corruption (store attribute)")
    infer.add_argument("--severity", type=int, default=0, choices=range(6), help="its severity, 0 for clean")
    infer.add_argument("--model-name", help="the model's name in the config (store attribute)")
    infer.add_argument("--method-name", help="the method's name in the config (store attribute)")
    infer.add_argument("--out", required=True, help="cache store (.zarr) to write")
    infer.set_defaults(run=_cmd_infer)

    _add_evaluate_command(commands)

    project = commands.add_parser("project-masks", help="project a mask store onto a token grid for fast scoring")
    project.add_argument("--masks", required=True, help="mask store (.zarr)")
    project.add_argument("--grid", required=True, help="token grid, e.g. 14x14")
    project.add_argument("--out", required=True, help="projections store (.zarr) to write")
    project.set_defaults(run=_cmd_project_masks)

    score = commands.add_parser("score", help="per-sample RMA of a cache store against a mask store")
    score.add_argument("--cache", required=True)
    score.add_argument("--masks", required=True, help="mask store, or projections store for the cache's grid")
    score.add_argument("--projections", help="the mask store's projections store for the cache's grid (faster)")
    score.add_argument("--normalization", choices=NORMALIZATIONS, default="minmax",
                       help="the normalisation tables report (the store holds both)")
    score.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                       help="registered localisation metrics (rationality list metrics); the first is the primary one")
    score.add_argument("--dask-address", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                       help="compute on this Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else locally)")
    score.add_argument("--out", required=True, help="scores store (.zarr) to write")
    score.set_defaults(run=_cmd_score)

    for name, help_text in (("rescore", "print PT / IR / accuracy / quadrants of scores stores"),
                            ("table", "write the PT / IR table of scores stores as CSV")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("scores", nargs="+", help="scores stores (.zarr)")
        threshold_options(command)
        command.add_argument("--undefined", choices=UNDEFINED_POLICIES, default="invalid",
                             help="how samples with undefined RMA count")
        command.add_argument("--policies", nargs="+", choices=START_LAYER_POLICIES,
                             default=list(START_LAYER_POLICIES), help="start-layer policies")
        if name == "table":
            command.add_argument("--out", required=True, help="CSV to write")
            command.add_argument("--paper-csv", help="also write the paper-layout tables as CSV (marks in avg_mark)")
            command.add_argument("--markdown", help="also write them as Markdown")
            command.add_argument("--latex", help="also write them as LaTeX (booktabs)")
            command.add_argument("--digits", type=int, default=3, help="decimals shown (and compared for marks)")
            command.add_argument("--grids", type=_grids,
                                 help="the config's runs grids as JSON ([{models, datasets, methods}, ...]): one set "
                                      "of paper-layout tables each (default: one grid of everything)")
        command.set_defaults(run=_cmd_rescore if name == "rescore" else _cmd_table)
    ablation = commands.add_parser("ablation-table", help="an ablation table in the layout of the paper's Table 3")
    ablation.add_argument("scores", nargs="+", help="scores stores (.zarr) of every run the table names")
    ablation.add_argument("--layout", required=True, type=_json("--layout"),
                          help="which run fills which cell, as JSON (see rationality.report.ablations)")
    threshold_options(ablation)
    ablation.add_argument("--undefined", choices=UNDEFINED_POLICIES, default="invalid",
                          help="how samples with undefined RMA count")
    ablation.add_argument("--out", required=True, help="CSV to write")
    ablation.add_argument("--markdown", help="also write it as Markdown")
    ablation.add_argument("--latex", help="also write it as LaTeX (booktabs)")
    ablation.add_argument("--digits", type=int, default=3, help="decimals shown (and compared for the best)")
    ablation.set_defaults(run=_cmd_ablation_table)
    _add_report_commands(commands)
    _add_threads_option(parser)
    return parser


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers of every command that runs (subcommands of subcommands included)."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield parser
    for group in groups:
        for command in dict.fromkeys(group.choices.values()):
            yield from _commands(command)


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads`` for every command: the CPUs it computes on (see :mod:`rationality.cpus`). A command
    that runs Snakemake (``evaluate``) takes ``--cores`` instead, and its jobs get their own ``--threads``."""
    from rationality.cpus import available_cpus

    for command in _commands(parser):
        if any("--cores" in action.option_strings for action in command._actions):
            continue
        command.add_argument("--threads", type=int, default=available_cpus(),
                             help="CPUs to compute on: torch threads, at most this many image-loading workers, "
                                  "Dask threads (default: the CPUs this process may use, %(default)s here)")


def main(argv: Sequence[str] | None = None) -> int:
    from rationality.cpus import cpu_budget, describe

    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # in a log file, lines in the order they happened
    try:
        with cpu_budget(args.threads if hasattr(args, "threads") else args.cores):
            if args.command in TORCH_COMMANDS:
                print(f"rationality {args.command}: {describe()}", file=sys.stderr)
            status = args.run(args)
    except RationalityError as exc:
        print(f"rationality {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
