"""The README's demo table, written from the demo's outputs, never by hand.

    python -m rationality.report.readme_demo results/               # rewrites README.md's demo block
    python -m rationality.report.readme_demo results/ --print       # prints the block instead
    python -m rationality.report.readme_demo results/ --model tiny-siglip --print   # another model's rows

Reads ``<results>/tables/pt_ir.csv`` and ``<results>/tables/bootstrap.csv`` (both made by the demo's
default target) and the first line of every model job's log (``<results>/logs/{pretrain,train,infer}/``,
which names torch's version, its threads and the CPU: the demo's numbers depend on them), and
replaces the lines between :data:`BEGIN` and :data:`END` in the README with: a sentence on how the
numbers were made, the table of every method of one model (accuracy, PT with its bootstrap interval,
IR, quadrants), the headline comparison of fine-tuning against zero-shot, and the time the jobs took
per rule (``<results>/benchmarks/``, Snakemake's benchmark files of the run).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from rationality.errors import RationalityError

BEGIN = "<!-- demo-table: written by `python -m rationality.report.readme_demo results/`; do not edit -->"
END = "<!-- /demo-table -->"
#: The model, explainer, start-layer policy and localisation metric the README shows.
MODEL, EXPLAINER, POLICY, METRIC = "tiny-vit", "generic_attention", "all_blocks", "rma"
#: How the README names each method kind (other kinds: the config's method name).
KIND_NAMES = {"zero_shot": "zero-shot", "linear_probe": "linear probe", "finetune": "fine-tuning", "flcp": "FLCP",
              "coop": "CoOp", "tip_adapter_f": "Tip-Adapter-F"}
#: The logs whose first line records what a model job's floating-point results depend on.
MODEL_LOGS = ("pretrain", "train", "infer")
_SETTINGS_LINE = re.compile(r"^rationality (?:pretrain|train|infer): (torch .*)$")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise RationalityError(f"{path}: no such table (run the demo first: snakemake --cores 8)")
    return pd.read_csv(path)


def _shown_rows(table: pd.DataFrame, path: Path, model: str) -> pd.DataFrame:
    """The clean rows of ``model`` for the README's explainer and policy, one per method, in table order."""
    rows = table[(table.model == model) & (table.explainer == EXPLAINER) & (table.start_layer_policy == POLICY)]
    if "metric" in rows:
        rows = rows[rows.metric == METRIC]
    if rows.empty:
        raise RationalityError(f"{path}: no rows for model {model}, explainer {EXPLAINER} and start-layer policy "
                               f"{POLICY} (models in the table: {sorted(table.model.unique())})")
    if rows.duplicated(["method"]).any() or rows.dataset.nunique() != 1:
        raise RationalityError(f"{path}: the README's table shows one model on one dataset; found {model} on "
                               f"{sorted(rows.dataset.unique())}")
    return rows.set_index("method")


def job_settings(results: Path, model: str) -> list[str]:
    """The distinct settings lines (``torch 2.14.1, 1 thread, CPU AMD EPYC (AVX2 kernels)``) of ``model``'s jobs'
    logs (``logs/pretrain/<model>.log``, ``logs/{train,infer}/<model>/...``)."""
    settings = []
    for stage in MODEL_LOGS:
        folder = results / "logs" / stage
        logs = folder.glob(f"{model}.log") if stage == "pretrain" else (folder / model).rglob("*.log")
        for log in sorted(logs):
            with log.open() as handle:
                match = _SETTINGS_LINE.match(handle.readline().rstrip("\n"))
            if match:
                settings.append(match.group(1))
    return list(dict.fromkeys(settings))


def job_times(results: Path) -> str:
    """One sentence: the run's jobs per rule and their summed seconds, from Snakemake's benchmark files
    (``<results>/benchmarks/<rule>/.../*.tsv``, column ``s``); empty without them."""
    seconds: dict[str, list[float]] = {}
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        seconds.setdefault(rule, []).extend(pd.read_csv(tsv, sep="\t")["s"].tolist())
    if not seconds:
        return ""
    parts = [f"{rule} {len(times)} job{'s' if len(times) > 1 else ''}, {sum(times):,.0f} s"
             for rule, times in sorted(seconds.items(), key=lambda item: -sum(item[1]))]
    return (f"Job time of the run these numbers come from ({len(seconds)} rules, {sum(map(sum, seconds.values())):,.0f} s "
            f"summed over jobs; Snakemake's benchmark files): {'; '.join(parts)}.")


def demo_block(results: str | Path, model: str = MODEL) -> str:
    """The README's demo block (Markdown, without the markers) for ``model`` from the demo's outputs under ``results``.

    Raises:
        RationalityError: a table is missing or does not hold one model on one dataset.
    """
    results = Path(results)
    pt_ir_path, bootstrap_path = results / "tables" / "pt_ir.csv", results / "tables" / "bootstrap.csv"
    table = _read_csv(pt_ir_path)
    rows = _shown_rows(table, pt_ir_path, model)
    intervals = _shown_rows(_read_csv(bootstrap_path), bootstrap_path, model)
    others = sorted(set(table.model) - {model})
    missing = sorted(set(rows.index) - set(intervals.index))
    if missing:
        raise RationalityError(f"{bootstrap_path}: no intervals for methods {missing} (re-run the demo)")
    first = rows.iloc[0]
    confidence = f"{intervals.confidence.iloc[0]:.0%}"
    settings = job_settings(results, model)
    lines = [f"What the demo reports for {model} (generic attention attribution, all blocks; {int(first.n)} test "
             f"images; threshold {first.threshold:g}; {confidence} bootstrap intervals of "
             f"{int(intervals.resamples.iloc[0]):,} resamples; made with "
             f"{' / '.join(settings) if settings else 'settings not recorded in the logs'}"
             + (f"; `results/tables/pt_ir.csv` has the rows of {', '.join(others)} next to these" if others else "")
             + "):",
             "",
             f"| method | accuracy | PT | PT {confidence} interval | IR | RR | RW | WR | WW |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, row in rows.iterrows():
        interval = intervals.loc[method]
        lines.append(f"| {KIND_NAMES.get(row.method_kind, method)} | {row.accuracy:.3f} | {row.pt:.3f} | "
                     f"{interval.pt_low:.3f}-{interval.pt_high:.3f} | {row.ir:.3f} | {int(row.rr)} | {int(row.rw)} | "
                     f"{int(row.wr)} | {int(row.ww)} |")
    lines += ["", headline(rows, intervals)]
    times = job_times(results)
    if times:
        lines += ["", times]
    return "\n".join(lines)


def headline(rows: pd.DataFrame, intervals: pd.DataFrame) -> str:
    """One sentence comparing fine-tuning's PT with zero-shot's, with their intervals (empty if either is absent)."""
    by_kind = {row.method_kind: method for method, row in rows.iterrows()}
    if "zero_shot" not in by_kind or "finetune" not in by_kind:
        return ""
    zero_shot, finetune = intervals.loc[by_kind["zero_shot"]], intervals.loc[by_kind["finetune"]]
    if finetune.pt_high < zero_shot.pt_low:
        verdict = "lowers PT: the intervals do not overlap"
    elif finetune.pt_low > zero_shot.pt_high:
        verdict = "raises PT: the intervals do not overlap"
    else:
        verdict = "does not change PT beyond its uncertainty: the intervals overlap"
    return (f"Fine-tuning {verdict} (zero-shot {zero_shot.pt:.3f}, {zero_shot.pt_low:.3f}-{zero_shot.pt_high:.3f}; "
            f"fine-tuning {finetune.pt:.3f}, {finetune.pt_low:.3f}-{finetune.pt_high:.3f}).")


def replace_block(text: str, block: str, source: str = "README.md") -> str:
    """``text`` with the lines between :data:`BEGIN` and :data:`END` replaced by ``block``.

    Raises:
        RationalityError: the markers are missing, repeated or out of order.
    """
    lines = text.split("\n")
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise RationalityError(f"{source}: needs one line {BEGIN!r} followed by one line {END!r}")
    return "\n".join(lines[: begins[0] + 1] + block.split("\n") + lines[ends[0]:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rationality.report.readme_demo", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the demo's results directory")
    parser.add_argument("--readme", default="README.md", help="the file whose demo block to rewrite")
    parser.add_argument("--model", default=MODEL, help="the model whose rows to show (default: %(default)s)")
    parser.add_argument("--print", action="store_true", help="print the block instead of rewriting the README")
    args = parser.parse_args(argv)
    try:
        block = demo_block(args.results, args.model)
        if args.print:
            print(block)
            return 0
        readme = Path(args.readme)
        if not readme.is_file():
            raise RationalityError(f"{readme}: no such file")
        readme.write_text(replace_block(readme.read_text(), block, str(readme)))
    except RationalityError as exc:
        print(f"readme_demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the demo block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
