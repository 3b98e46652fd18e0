"""Ablation tables in the layout of the paper's Table 3, as CSV, Markdown and LaTeX.

Rows are setups x evaluations (accuracy, PT, IR), columns the ablation's methods; in every row the
best method is **bold** (Table 3 marks the best only). Each cell is read from the long table of
:func:`~rationality.report.tables.rationality_table`: the row of the cell's run (model, dataset and
the run's method name, e.g. ``lp@adamw``) for the setup's explainer and the ablation's start-layer
policy. What fills which cell is the config's business (:func:`rationality.config.ablation_cells`);
the workflow passes it as a *layout*::

    {"name": "table3", "model": "clip-b32", "dataset": "imagenet", "methods": ["zs", "lp", ...],
     "policy": "paper", "setups": [{"name": "adamw", "label": "AdamW optimizer",
                                    "explainer": "generic_attention", "runs": {"zs": "zs", "lp": "lp@adamw"}}]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from rationality.errors import StoreError
from rationality.report.layout import (
    BEST,
    DEFAULT_DIGITS,
    format_value,
    latex_escape,
    latex_label,
    latex_table,
    mark_best,
    markdown_table,
    styled,
    write_each,
)
from rationality.report.tables import METRIC_LABELS

METRICS = ("accuracy", "pt", "ir")
#: The key columns of the ablation CSV, before one value column per method and ``best``.
ABLATION_KEYS = ["ablation", "setup", "label", "explainer", "start_layer_policy", "metric"]
#: The options the values were computed with (the long table's columns), kept in the CSV for the report.
MADE_WITH = ["threshold", "undefined_policy", "normalization"]


def layout_for(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The layout of ablation ``name`` of a validated config (see the module docstring)."""
    from rationality.config import ablation_cells

    ablation = config["ablations"][name]
    setups: dict[str, dict[str, Any]] = {}
    for cell in ablation_cells(config):
        if cell.ablation == name:
            setup = setups.setdefault(cell.setup, {"name": cell.setup, "label": cell.label,
                                                   "explainer": cell.explainer, "runs": {}})
            setup["runs"][cell.method] = cell.run[2]
    return {"name": name, "model": ablation["model"], "dataset": ablation["dataset"],
            "methods": list(ablation["methods"]), "policy": ablation["policy"], "setups": list(setups.values())}


def ablation_frame(long: pd.DataFrame, layout: Mapping[str, Any]) -> pd.DataFrame:
    """Values [setup x metric, method] of an ablation: :data:`ABLATION_KEYS`, one column per method, ``best``.

    Raises:
        StoreError: a cell's run, explainer or policy is not in ``long`` (its scores store was not given),
            or a run is there twice.
    """
    clean = long[(long["severity"] == 0) & (long["model"] == layout["model"]) & (long["dataset"] == layout["dataset"])
                 & (long["start_layer_policy"] == layout["policy"])]
    indexed = clean.set_index(["method", "explainer"])
    if indexed.index.has_duplicates:
        raise StoreError(f"ablation {layout['name']}: several rows for one run and explainer; give each store once")
    rows = []
    for setup in layout["setups"]:
        values = {}
        for method in layout["methods"]:
            key = (setup["runs"][method], setup["explainer"])
            if key not in indexed.index:
                raise StoreError(f"ablation {layout['name']}, setup {setup['name']}: no scores of run "
                                 f"({layout['model']}, {layout['dataset']}, {key[0]}) with explainer {key[1]} and "
                                 f"start-layer policy {layout['policy']} among the given stores")
            values[method] = indexed.loc[key]
        made_with = {key: next(iter(values.values()))[key] for key in MADE_WITH}
        for metric in METRICS:
            rows.append({"ablation": layout["name"], "setup": setup["name"], "label": setup["label"],
                         "explainer": setup["explainer"], "start_layer_policy": layout["policy"], "metric": metric,
                         **{method: float(row[metric]) for method, row in values.items()}, **made_with})
    return pd.DataFrame(rows, columns=[*ABLATION_KEYS, *layout["methods"], *MADE_WITH])


def best_marks(frame: pd.DataFrame, methods: list[str], digits: int) -> pd.DataFrame:
    """``best`` / ``""`` per (row, method): the best method of each row, compared rounded to ``digits``."""
    return frame[methods].apply(lambda row: mark_best(row, digits, marks=(BEST,)), axis=1)


def to_markdown(frame: pd.DataFrame, layout: Mapping[str, Any], digits: int = DEFAULT_DIGITS) -> str:
    """The ablation as a Markdown section: a row group per setup, its label on the first row."""
    methods = list(layout["methods"])
    marks = best_marks(frame, methods, digits)
    rows = []
    for (i, row), previous in zip(frame.iterrows(), [None, *frame["setup"][:-1]]):
        label = f"{row['label']} ({row['explainer']})" if row["setup"] != previous else ""
        rows.append([label, METRIC_LABELS[row["metric"]]]
                    + [styled(format_value(row[m], digits), marks.loc[i, m], "**{}**", "{}") for m in methods])
    title = (f"### {layout['name']}: {layout['model']} on {layout['dataset']} "
             f"(start layer: {layout['policy']})\n\nThe best of each row in **bold**.\n\n")
    return title + markdown_table(["setup", "evaluation", *methods], rows, text_columns=2) + "\n"


def to_latex(frame: pd.DataFrame, layout: Mapping[str, Any], digits: int = DEFAULT_DIGITS) -> str:
    """The ablation as a ``booktabs`` table (``\\usepackage{booktabs,multirow}``), a setup spanning its rows."""
    methods = list(layout["methods"])
    marks = best_marks(frame, methods, digits)
    rows = []
    for (i, row), previous in zip(frame.iterrows(), [None, *frame["setup"][:-1]]):
        label = (rf"\multirow{{{len(METRICS)}}}{{*}}{{{latex_escape(row['label'])}}}"
                 if row["setup"] != previous else "")
        rows.append(" & ".join([label, METRIC_LABELS[row["metric"]]]
                               + [styled(format_value(row[m], digits), marks.loc[i, m], r"\textbf{{{}}}", "{}")
                                  for m in methods]))
    caption = latex_escape(f"{layout['name']}: {layout['model']} on {layout['dataset']} (start layer: "
                           f"{layout['policy']}). The best of each row in bold.")
    return ("% Generated by `rationality ablation-table`; needs \\usepackage{booktabs,multirow}.\n"
            + latex_table(caption, latex_label("ablation", layout["name"]),
                          ["Setup", "Evaluation", *map(latex_escape, methods)], rows, text_columns=2))


def write_ablation(long: pd.DataFrame, layout: Mapping[str, Any], csv: str | None = None,
                   markdown: str | None = None, latex: str | None = None,
                   digits: int = DEFAULT_DIGITS) -> list[Path]:
    """Write the ablation table of ``long`` to whichever of ``csv``, ``markdown``, ``latex`` is given.
    The CSV keeps full precision and names each row's best method(s) in ``best``."""
    frame = ablation_frame(long, layout)

    def write_csv(path: Path) -> None:
        marks = best_marks(frame, list(layout["methods"]), digits)
        best = marks.apply(lambda row: " ".join(row.index[row == BEST]), axis=1)
        frame.assign(best=best).to_csv(path, index=False, float_format="%.6f")

    return write_each([(csv, write_csv), (markdown, lambda path: path.write_text(to_markdown(frame, layout, digits))),
                       (latex, lambda path: path.write_text(to_latex(frame, layout, digits)))])

