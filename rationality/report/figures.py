"""What every figure shares: panel grid, method colours, saving.

Figures are built as :class:`matplotlib.figure.Figure` objects without ``pyplot``, so nothing
depends on a GUI backend or on global state; PNGs are written by the Agg canvas. Sizes are fixed
(``figsize`` in inches at :data:`DPI`, constrained layout, no tight bounding box), so a figure of
r x c panels is always ``c * panel_width * DPI`` by ``r * panel_height * DPI`` pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rationality.report.made_with import png_text

#: Pixels per inch of every saved figure.
DPI = 150
#: (width, height) in inches of one line-plot panel.
PANEL = (3.2, 2.6)


def panel_figure(rows: int, columns: int, panel: tuple[float, float] = PANEL) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` x ``columns`` panels.

    Returns:
        The figure and its axes as an object array [rows, columns].
    """
    figure = Figure(figsize=(columns * panel[0], rows * panel[1]), dpi=DPI, layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def method_colors(methods: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per method, in the given order (matplotlib's ``tab10`` cycle)."""
    palette = colormaps["tab10"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


def ratio_axes(ax: Axes, ylabel: str) -> None:
    """Style an axis that shows a ratio in [0, 1]."""
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def method_legend(figure: Figure, axes: np.ndarray) -> None:
    """One legend below the panels for every labelled line of the figure (each label once)."""
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6),
                      frameon=False)


def empty_figure(message: str) -> Figure:
    """A small figure that says why there is nothing to plot (a rule's output must still exist)."""
    figure = Figure(figsize=(5.0, 1.5), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return figure


def save_figure(figure: Figure, out: str | Path, made_with: Mapping[str, object] | None = None) -> Path:
    """Write ``figure`` as a PNG at :data:`DPI` (parent directories created); returns the path.

    Args:
        made_with: the options the figure's values depend on (threshold, policies, explainer, ...),
            written into the PNG as text (see :mod:`rationality.report.made_with`).
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png", metadata=png_text(made_with or {}))
    return path
