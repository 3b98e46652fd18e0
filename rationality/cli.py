"""The ``rationality`` command: one subcommand per workflow stage, plus re-scoring.

Specs (model, dataset, method, synthetic data) are passed as JSON (or YAML) text, exactly as they
appear under the config's ``models``, ``datasets``, ``methods`` and ``synthetic`` sections, and are
validated against the same schema. Bad inputs end with a one-line error naming the file and fault.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from rationality import __version__
from rationality.errors import ConfigError, RationalityError


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


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from rationality.pretrain import pretrain_image_text

    spec = args.spec
    path = pretrain_image_text(args.model, _dataset(args), args.split, args.out, epochs=spec["epochs"],
                               lr=float(spec["lr"]), batch_size=spec["batch_size"], seed=args.seed)
    print(f"wrote {path}")


def _cmd_train(args: argparse.Namespace) -> None:
    from rationality.train import train_checkpoint

    path = train_checkpoint(args.model, _dataset(args), args.method, args.split, args.out, seed=args.seed,
                            device=args.device, num_workers=args.num_workers)
    print(f"wrote {path}")


def _cmd_infer(args: argparse.Namespace) -> None:
    from rationality.infer import run_inference

    path = run_inference(args.checkpoint, _dataset(args), args.split, args.out, explainers=args.explainers,
                         batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                         precision=args.precision, corruption=args.corruption, severity=args.severity,
                         model_name=args.model_name, method_name=args.method_name)
    print(f"wrote {path}")


def _cmd_project_masks(args: argparse.Namespace) -> None:
    from rationality.scoring.project import parse_grid, project_mask_store

    print(f"wrote {project_mask_store(args.masks, parse_grid(args.grid), args.out)}")


def _cmd_score(args: argparse.Namespace) -> None:
    from rationality.scoring.score import ScoringOptions, score_stores

    path = score_stores(args.cache, args.masks, args.out, ScoringOptions(normalization=args.normalization),
                        dask_address=args.dask_address)
    print(f"wrote {path}")


def _table(args: argparse.Namespace):
    from rationality.report.tables import rationality_table

    return rationality_table(args.scores, threshold=args.threshold, undefined=args.undefined,
                             policies=args.policies)


def _cmd_rescore(args: argparse.Namespace) -> None:
    table = _table(args)
    shown = ["model", "dataset", "method", "explainer", "start_layer_policy", "start_layer",
             "accuracy", "pt", "ir", "rr", "rw", "wr", "ww", "n", "n_undefined"]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _cmd_table(args: argparse.Namespace) -> None:
    table = _table(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    print(f"wrote {args.out} ({len(table)} rows)")


def build_parser() -> argparse.ArgumentParser:
    from rationality.report.tables import START_LAYER_POLICIES
    from rationality.scoring.metrics import DEFAULT_THRESHOLD, UNDEFINED_POLICIES
    from rationality.scoring.rma import NORMALIZATIONS

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
    masks.add_argument("--geometry", required=True, help="r<resize>c<crop>, e.g. r224c224")
    masks.add_argument("--out", required=True, help="mask store (.zarr) to write")
    masks.set_defaults(run=_cmd_masks)

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
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.set_defaults(run=_cmd_train)

    infer = commands.add_parser("infer", help="logits and ground-truth heatmaps into a cache store")
    infer.add_argument("--checkpoint", required=True)
    dataset_options(infer, "split to explain")
    infer.add_argument("--explainers", nargs="+", default=["generic_attention"])
    infer.add_argument("--batch-size", type=int, default=32)
    infer.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    infer.add_argument("--num-workers", type=int, default=0, help="image-loading processes")
    infer.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                       help="fp32, or bf16/fp16 autocast (GPU; changes heatmaps slightly)")
    infer.add_argument("--corruption", default="none", help="the images' corruption (store attribute)")
    infer.add_argument("--severity", type=int, default=0, choices=range(6), help="its severity, 0 for clean")
    infer.add_argument("--model-name", help="the model's name in the config (store attribute)")
    infer.add_argument("--method-name", help="the method's name in the config (store attribute)")
    infer.add_argument("--out", required=True, help="cache store (.zarr) to write")
    infer.set_defaults(run=_cmd_infer)

    project = commands.add_parser("project-masks", help="project a mask store onto a token grid for fast scoring")
    project.add_argument("--masks", required=True, help="mask store (.zarr)")
    project.add_argument("--grid", required=True, help="token grid, e.g. 14x14")
    project.add_argument("--out", required=True, help="projections store (.zarr) to write")
    project.set_defaults(run=_cmd_project_masks)

    score = commands.add_parser("score", help="per-sample RMA of a cache store against a mask store")
    score.add_argument("--cache", required=True)
    score.add_argument("--masks", required=True, help="mask store, or projections store for the cache's grid")
    score.add_argument("--normalization", choices=NORMALIZATIONS, default="minmax")
    score.add_argument("--dask-address", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                       help="compute on this Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else locally)")
    score.add_argument("--out", required=True, help="scores store (.zarr) to write")
    score.set_defaults(run=_cmd_score)

    for name, help_text in (("rescore", "print PT / IR / accuracy / quadrants of scores stores"),
                            ("table", "write the PT / IR table of scores stores as CSV")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("scores", nargs="+", help="scores stores (.zarr)")
        command.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
        command.add_argument("--undefined", choices=UNDEFINED_POLICIES, default="invalid",
                             help="how samples with undefined RMA count")
        command.add_argument("--policies", nargs="+", choices=START_LAYER_POLICIES,
                             default=list(START_LAYER_POLICIES), help="start-layer policies")
        if name == "table":
            command.add_argument("--out", required=True, help="CSV to write")
        command.set_defaults(run=_cmd_rescore if name == "rescore" else _cmd_table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except RationalityError as exc:
        print(f"rationality {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
