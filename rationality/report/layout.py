"""Tables in the paper's layout, as CSV, Markdown and LaTeX, from the long table.

Per model: rows are methods, columns are datasets plus their average (``avg``: the unweighted mean
over the datasets, NaN unless every dataset has a value, so averages compare like with like). One
table for accuracy, and one per (explainer, start-layer policy) for PT and for IR. Only clean rows
(severity 0) of :func:`~rationality.report.tables.rationality_table` enter.

In every column the best and second-best methods are marked (higher is better for all three
metrics). Values are compared as displayed, rounded to ``digits`` decimals: methods that tie at
that precision share a mark, and the second best is the next lower displayed value. NaN is never
marked. Markdown shows the best in **bold** and the second best as <ins>underlined</ins> (the HTML
tag GitHub renders); LaTeX uses ``\\textbf`` and ``\\underline`` in ``booktabs`` tables; the CSV keeps
full-precision numbers and adds a ``<column>_mark`` column holding ``best``, ``second`` or nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rationality.report.tables import METRIC_LABELS

AVERAGE = "avg"
BEST, SECOND = "best", "second"
DEFAULT_DIGITS = 3
#: The key columns of the layout CSV, before the per-dataset value and mark columns.
LAYOUT_KEYS = ["model", "metric", "explainer", "start_layer_policy", "method"]
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper's layout.

    Attributes:
        model: the model all rows belong to.
        metric: ``accuracy``, ``pt`` or ``ir``.
        explainer, policy: the heatmaps behind PT and IR (None for accuracy, which has none).
        values: [method, dataset... + avg] float.
        marks: same shape, ``best``, ``second`` or ``""``.
    """

    model: str
    metric: str
    explainer: str | None
    policy: str | None
    values: pd.DataFrame
    marks: pd.DataFrame

    @property
    def title(self) -> str:
        """E.g. ``tiny-vit: PT (generic_attention, start layer: paper)``."""
        label = METRIC_LABELS[self.metric]
        if self.explainer is None:
            return f"{self.model}: {label}"
        return f"{self.model}: {label} ({self.explainer}, start layer: {self.policy})"


def mark_best(values: pd.DataFrame, digits: int = DEFAULT_DIGITS) -> pd.DataFrame:
    """``best`` / ``second`` / ``""`` per cell of ``values`` [rows, columns], column by column."""
    rounded = values.round(digits)
    marks = pd.DataFrame("", index=values.index, columns=values.columns)
    for column in rounded.columns:
        ranked = np.sort(rounded[column].dropna().unique())[::-1]
        for mark, value in zip((BEST, SECOND), ranked):
            marks.loc[rounded[column] == value, column] = mark
    return marks


def _table(rows: pd.DataFrame, model: str, metric: str, explainer: str | None, policy: str | None,
           methods: list[str], datasets: list[str], digits: int) -> PaperTable:
    duplicated = rows[rows.duplicated(["dataset", "method"], keep=False)]
    if len(duplicated):
        raise ValueError(f"{model}: several rows for (dataset, method) "
                         f"{sorted(set(zip(duplicated.dataset, duplicated.method)))}; give each store once")
    values = rows.pivot(index="method", columns="dataset", values=metric).reindex(index=methods, columns=datasets)
    values = values.astype(np.float64)
    values[AVERAGE] = values.mean(axis=1, skipna=False)
    values.index.name, values.columns.name = None, None
    return PaperTable(model, metric, explainer, policy, values, mark_best(values, digits))


def paper_tables(long: pd.DataFrame, digits: int = DEFAULT_DIGITS) -> list[PaperTable]:
    """The paper-layout tables of a long table (columns of :data:`~rationality.report.tables.TABLE_COLUMNS`).

    Models, methods, datasets, explainers and policies keep their order of first appearance.
    """
    clean = long[long["severity"] == 0]
    tables = []
    for model in dict.fromkeys(clean["model"]):
        rows = clean[clean["model"] == model]
        methods, datasets = list(dict.fromkeys(rows["method"])), list(dict.fromkeys(rows["dataset"]))
        first = rows[(rows["explainer"] == rows["explainer"].iloc[0])
                     & (rows["start_layer_policy"] == rows["start_layer_policy"].iloc[0])]
        tables.append(_table(first, model, "accuracy", None, None, methods, datasets, digits))
        for explainer in dict.fromkeys(rows["explainer"]):
            for policy in dict.fromkeys(rows["start_layer_policy"]):
                chosen = rows[(rows["explainer"] == explainer) & (rows["start_layer_policy"] == policy)]
                for metric in ("pt", "ir"):
                    tables.append(_table(chosen, model, metric, explainer, policy, methods, datasets, digits))
    return tables


def _format(value: float, digits: int) -> str:
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def _cells(table: PaperTable, digits: int, best: str, second: str) -> list[list[str]]:
    """Formatted rows [method, values...] with ``best`` / ``second`` format strings applied."""
    styles = {BEST: best, SECOND: second, "": "{}"}
    return [[str(method)] + [styles[table.marks.loc[method, column]].format(_format(value, digits))
                             for column, value in row.items()]
            for method, row in table.values.iterrows()]


def to_markdown(tables: list[PaperTable], digits: int = DEFAULT_DIGITS) -> str:
    """Every table as a Markdown section (``###`` heading, pipe table); best bold, second underlined."""
    parts = ["Best per column in **bold**, second best <ins>underlined</ins>; "
             f"`{AVERAGE}` is the mean over the datasets.\n"]
    for table in tables:
        header = ["method", *map(str, table.values.columns)]
        lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
                 "| --- |" + " ---: |" * (len(header) - 1)]
        lines += ["| " + " | ".join(cells) + " |" for cells in _cells(table, digits, "**{}**", "<ins>{}</ins>")]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def to_latex(tables: list[PaperTable], digits: int = DEFAULT_DIGITS) -> str:
    """Every table as a ``table`` environment with a ``booktabs`` tabular (``\\usepackage{booktabs}``)."""
    parts = ["% Generated by `rationality table`; needs \\usepackage{booktabs}.\n"]
    for table in tables:
        label = re.sub(r"[^A-Za-z0-9:-]+", "-", "tab:" + "-".join(
            part for part in (table.model, table.metric, table.explainer, table.policy) if part))
        header = ["Method", *(latex_escape(str(c)) if c != AVERAGE else "Avg." for c in table.values.columns)]
        rows = [" & ".join(latex_escape(cells[0]) if i == 0 else cell for i, cell in enumerate(cells)) + r" \\"
                for cells in _cells(table, digits, r"\textbf{{{}}}", r"\underline{{{}}}")]
        parts.append("\n".join([
            r"\begin{table}[t]", r"  \centering",
            rf"  \caption{{{latex_escape(table.title)}. Best in bold, second best underlined.}}",
            rf"  \label{{{label}}}", rf"  \begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", r"    \toprule",
            "    " + " & ".join(header) + r" \\", r"    \midrule", *("    " + row for row in rows),
            r"    \bottomrule", r"  \end{tabular}", r"\end{table}",
        ]) + "\n")
    return "\n".join(parts)


def to_frame(tables: list[PaperTable]) -> pd.DataFrame:
    """All tables in one frame for CSV: :data:`LAYOUT_KEYS`, then ``<column>`` and ``<column>_mark`` per column."""
    frames = []
    for table in tables:
        frame = pd.DataFrame({"model": table.model, "metric": table.metric, "explainer": table.explainer,
                              "start_layer_policy": table.policy, "method": table.values.index})
        for column in table.values.columns:
            frame[column] = table.values[column].to_numpy()
            frame[f"{column}_mark"] = table.marks[column].to_numpy()
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=LAYOUT_KEYS)
    combined = pd.concat(frames, ignore_index=True)
    average = [AVERAGE, f"{AVERAGE}_mark"]
    return combined[[c for c in combined.columns if c not in average] + average]


def write_layout(long: pd.DataFrame, csv: str | None = None, markdown: str | None = None, latex: str | None = None,
                 digits: int = DEFAULT_DIGITS) -> list[Path]:
    """Write the paper-layout tables of ``long`` to whichever of ``csv``, ``markdown``, ``latex`` is given."""
    tables = paper_tables(long, digits)
    written = []
    for path, text in ((csv, None), (markdown, to_markdown), (latex, to_latex)):
        if path is None:
            continue
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            to_frame(tables).to_csv(target, index=False, float_format="%.6f")
        else:
            target.write_text(text(tables, digits))
        written.append(target)
    return written
