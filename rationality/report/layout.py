"""Tables in the paper's layout, as CSV, Markdown and LaTeX, from the long table.

One set of tables per runs grid (a config's ``runs`` entry: models x datasets x methods; the paper's
Tables 1 and 2 are one grid, its Table 4 another): rows are (method, model), columns the grid's
datasets plus ``avg``, the mean of the method over **all** its models x datasets, as the paper's Avg
column (Table 4: zero-shot accuracy 64.15 is the mean of its 8 cells); a cell of a method trained
with several seeds is the mean over the seeds. ``avg`` is NaN unless every
cell has a value, so averages compare like with like. One table for accuracy, and one per (explainer,
start-layer policy) for PT and for IR. Only clean rows (severity 0) of
:func:`~rationality.report.tables.rationality_table` enter.

Marks are the paper's: among the methods' averages, the best is **bold** and the second best
<ins>underlined</ins> (higher is better for all three metrics). Averages are compared as displayed,
rounded to ``digits`` decimals: methods that tie at that precision share a mark, and the second best
is the next lower displayed value; NaN is never marked. Markdown shows each method's average once, on
its first row (the paper's merged cell), in **bold** / <ins>underlined</ins> (the HTML tag GitHub
renders); LaTeX uses ``\\textbf`` and ``\\underline`` in ``booktabs`` tables with ``\\multirow``; the
CSV keeps full-precision numbers, repeats the average on every row of its method and adds
``avg_mark`` (``best``, ``second`` or nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from rationality.report.tables import METRIC_LABELS

AVERAGE = "avg"
BEST, SECOND = "best", "second"
DEFAULT_DIGITS = 3
#: The key columns of the layout CSV, before the per-dataset value columns.
LAYOUT_KEYS = ["grid", "metric", "explainer", "start_layer_policy", "method", "model"]
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass(frozen=True)
class Grid:
    """The runs a set of tables covers: their cross product, in display order."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]

    @classmethod
    def from_dict(cls, grid: Mapping[str, Sequence[str]]) -> Grid:
        """From a config ``runs`` entry ``{models, datasets, methods}``."""
        return cls(tuple(grid["models"]), tuple(grid["datasets"]), tuple(grid["methods"]))


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper's layout.

    Attributes:
        grid: index of the runs grid the table covers.
        metric: ``accuracy``, ``pt`` or ``ir``.
        explainer, policy: the heatmaps behind PT and IR (None for accuracy, which has none).
        values: [(method, model), dataset... + avg] float; ``avg`` is the same on every row of a method.
        marks: [method] ``best``, ``second`` or ``""``: the marks of the methods' averages.
        several_grids: whether the config has more than one grid (titles then name the grid).
    """

    grid: int
    metric: str
    explainer: str | None
    policy: str | None
    values: pd.DataFrame
    marks: pd.Series
    several_grids: bool = False

    @property
    def title(self) -> str:
        """E.g. ``PT (generic_attention, start layer: paper)``, prefixed by the grid when there are several."""
        label = METRIC_LABELS[self.metric]
        if self.explainer is not None:
            label = f"{label} ({self.explainer}, start layer: {self.policy})"
        if not self.several_grids:
            return label
        methods = ", ".join(dict.fromkeys(self.values.index.get_level_values(0)))
        return f"runs grid {self.grid + 1} ({methods}): {label}"


def mark_best(values: pd.Series, digits: int = DEFAULT_DIGITS, marks: Sequence[str] = (BEST, SECOND)) -> pd.Series:
    """``best`` / ``second`` / ``""`` per value (higher is better), compared rounded to ``digits``."""
    rounded = values.astype(np.float64).round(digits)
    result = pd.Series("", index=values.index, dtype=object)
    for mark, value in zip(marks, np.sort(rounded.dropna().unique())[::-1]):
        result[rounded == value] = mark
    return result


def _table(rows: pd.DataFrame, grid: Grid, index: int, metric: str, explainer: str | None, policy: str | None,
           digits: int, several: bool) -> PaperTable:
    keys = ["model", "dataset", "method"] + (["seed"] if "seed" in rows else [])
    duplicated = rows[rows.duplicated(keys, keep=False)]
    if len(duplicated):
        raise ValueError(f"several rows for (model, dataset, method) "
                         f"{sorted(set(zip(duplicated.model, duplicated.dataset, duplicated.method)))}; "
                         f"give each store once")
    cells = rows.groupby(["method", "model", "dataset"], sort=False)[metric].mean().astype(np.float64)  # over seeds
    order = pd.MultiIndex.from_product([grid.methods, grid.models], names=["method", "model"])
    values = cells.unstack("dataset").reindex(index=order, columns=list(grid.datasets))
    values.columns.name = None
    average = values.groupby(level="method", sort=False).apply(lambda block: block.to_numpy().mean())
    values[AVERAGE] = average.reindex(values.index.get_level_values("method")).to_numpy()
    marks = mark_best(average.reindex(list(grid.methods)), digits)
    return PaperTable(index, metric, explainer, policy, values, marks, several)


def paper_tables(long: pd.DataFrame, grids: Sequence[Mapping[str, Sequence[str]]] | None = None,
                 digits: int = DEFAULT_DIGITS) -> list[PaperTable]:
    """The paper-layout tables of a long table (columns of :data:`~rationality.report.tables.TABLE_COLUMNS`).

    Args:
        long: the long table.
        grids: the config's ``runs`` grids (``{models, datasets, methods}`` each); None: one grid of
            every model, dataset and method in ``long``, in order of first appearance.
        digits: decimals the marks compare.
    """
    clean = long[long["severity"] == 0]
    if grids is None:
        grids = [{"models": list(dict.fromkeys(clean["model"])), "datasets": list(dict.fromkeys(clean["dataset"])),
                  "methods": list(dict.fromkeys(clean["method"]))}]
    tables = []
    for index, grid in enumerate(map(Grid.from_dict, grids)):
        rows = clean[clean["model"].isin(grid.models) & clean["dataset"].isin(grid.datasets)
                     & clean["method"].isin(grid.methods)]
        if rows.empty:
            continue
        several = len(grids) > 1
        first = rows[(rows["explainer"] == rows["explainer"].iloc[0])
                     & (rows["start_layer_policy"] == rows["start_layer_policy"].iloc[0])]
        tables.append(_table(first, grid, index, "accuracy", None, None, digits, several))
        for explainer in dict.fromkeys(rows["explainer"]):
            for policy in dict.fromkeys(rows["start_layer_policy"]):
                chosen = rows[(rows["explainer"] == explainer) & (rows["start_layer_policy"] == policy)]
                for metric in ("pt", "ir"):
                    tables.append(_table(chosen, grid, index, metric, explainer, policy, digits, several))
    return tables


def format_value(value: float, digits: int) -> str:
    """A value as displayed in every table: ``digits`` decimals, ``n/a`` for NaN."""
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def styled(text: str, mark: str, best: str, second: str) -> str:
    """``text`` in the ``best`` or ``second`` format string its mark asks for."""
    return {BEST: best, SECOND: second}.get(mark, "{}").format(text)


def _cells(table: PaperTable, digits: int, best: str, second: str) -> list[list[str]]:
    """Formatted rows [method, model, values..., avg]; a method's average only on its first row."""
    rows, seen = [], set()
    for (method, model), row in table.values.iterrows():
        cells = [str(method), str(model)] + [format_value(v, digits) for v in row.drop(AVERAGE)]
        average = styled(format_value(row[AVERAGE], digits), table.marks[method], best, second)
        rows.append(cells + ["" if method in seen else average])
        seen.add(method)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A pipe table: the first ``text_columns`` left-aligned, the rest right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def to_markdown(tables: list[PaperTable], digits: int = DEFAULT_DIGITS) -> str:
    """Every table as a Markdown section (``###`` heading, pipe table); best average bold, second underlined."""
    parts = [f"`{AVERAGE}`: the mean of a method over all its models and datasets; best in **bold**, second "
             "best <ins>underlined</ins>.\n"]
    for table in tables:
        header = ["method", "model", *map(str, table.values.columns)]
        rows = _cells(table, digits, "**{}**", "<ins>{}</ins>")
        parts.append(f"### {table.title}\n\n{markdown_table(header, rows, text_columns=2)}\n")
    return "\n".join(parts)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def latex_label(*parts: Any) -> str:
    """A ``\\label`` key from the non-empty parts: ``tab:`` + parts joined by ``-``, other characters as ``-``."""
    return re.sub(r"[^A-Za-z0-9:-]+", "-", "tab:" + "-".join(str(part) for part in parts if part is not None))


def latex_table(caption: str, label: str, header: Sequence[str], rows: Sequence[str], text_columns: int = 1) -> str:
    """A ``table`` environment around a ``booktabs`` tabular of pre-formatted ``rows`` (without ``\\\\``)."""
    spec = "l" * text_columns + "r" * (len(header) - text_columns)
    return "\n".join([
        r"\begin{table}[t]", r"  \centering", rf"  \caption{{{caption}}}", rf"  \label{{{label}}}",
        rf"  \begin{{tabular}}{{{spec}}}", r"    \toprule", "    " + " & ".join(header) + r" \\", r"    \midrule",
        *("    " + row + r" \\" for row in rows), r"    \bottomrule", r"  \end{tabular}", r"\end{table}",
    ]) + "\n"


def to_latex(tables: list[PaperTable], digits: int = DEFAULT_DIGITS) -> str:
    """Every table as a ``table`` environment with a ``booktabs`` tabular (``\\usepackage{booktabs,multirow}``);
    a method and its average span its model rows."""
    parts = ["% Generated by `rationality table`; needs \\usepackage{booktabs,multirow}.\n"]
    for table in tables:
        n_models = len(table.values.index.get_level_values("model").unique())
        header = ["Method", "Model", *(latex_escape(str(c)) if c != AVERAGE else "Avg."
                                       for c in table.values.columns)]
        rows = []
        for cells in _cells(table, digits, r"\textbf{{{}}}", r"\underline{{{}}}"):
            method, model, *values, average = cells
            first = average != ""
            spanned = (rf"\multirow{{{n_models}}}{{*}}{{{{{latex_escape(method)}}}}}" if first else "",
                       rf"\multirow{{{n_models}}}{{*}}{{{average}}}" if first else "")
            rows.append(" & ".join([spanned[0], latex_escape(model), *values, spanned[1]]))
        label = latex_label(f"grid{table.grid + 1}", table.metric, table.explainer, table.policy)
        caption = f"{latex_escape(table.title)}. Avg.: the mean over all models and datasets; best in bold, second " \
                  f"best underlined."
        parts.append(latex_table(caption, label, header, rows, text_columns=2))
    return "\n".join(parts)


def to_frame(tables: list[PaperTable]) -> pd.DataFrame:
    """All tables in one frame for CSV: :data:`LAYOUT_KEYS`, one column per dataset, ``avg`` and ``avg_mark``."""
    frames = []
    for table in tables:
        methods = table.values.index.get_level_values("method")
        frame = pd.DataFrame({"grid": table.grid, "metric": table.metric, "explainer": table.explainer,
                              "start_layer_policy": table.policy, "method": methods,
                              "model": table.values.index.get_level_values("model")})
        for column in table.values.columns:
            frame[column] = table.values[column].to_numpy()
        frame[f"{AVERAGE}_mark"] = table.marks.reindex(methods).to_numpy()
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=LAYOUT_KEYS)
    combined = pd.concat(frames, ignore_index=True)
    average = [AVERAGE, f"{AVERAGE}_mark"]
    return combined[[c for c in combined.columns if c not in average] + average]


def write_layout(long: pd.DataFrame, csv: str | None = None, markdown: str | None = None, latex: str | None = None,
                 digits: int = DEFAULT_DIGITS, grids: Sequence[Mapping[str, Sequence[str]]] | None = None) -> list[Path]:
    """Write the paper-layout tables of ``long`` (per runs grid, see :func:`paper_tables`) to whichever of
    ``csv``, ``markdown``, ``latex`` is given."""
    tables = paper_tables(long, grids, digits)
    return write_each([(csv, lambda path: to_frame(tables).to_csv(path, index=False, float_format="%.6f")),
                       (markdown, lambda path: path.write_text(to_markdown(tables, digits))),
                       (latex, lambda path: path.write_text(to_latex(tables, digits)))])


def write_each(outputs: Sequence[tuple[str | None, Callable[[Path], object]]]) -> list[Path]:
    """Call each writer with its path, its folder made first; a ``None`` path is skipped. The paths written."""
    written = []
    for path, write in outputs:
        if path is not None:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
            written.append(target)
    return written
