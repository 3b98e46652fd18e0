"""How a table or figure was made: the options that change its values, written with it and read back.

Tables hold them as columns: ``threshold``, ``undefined_policy`` and ``normalization`` (and, for the
resampled tables, ``resamples``, ``bootstrap_seed``, ``confidence``). Figures hold them as PNG text chunks
``rationality:<key>``: the same keys where they apply, and ``start_layer_policy`` and ``explainer``
for figures that show one of each. :func:`read_made_with` reads either kind back, so that the
workflow's report captions describe the file they caption, whatever the config says now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import xarray as xr

from rationality import schema

#: Prefix of the PNG text keys this package writes.
PNG_PREFIX = "rationality:"
#: The columns a table's made-with values are read from (each holding one value).
TABLE_KEYS = ("threshold", "undefined_policy", "normalization", "resamples", "bootstrap_seed", "confidence")


def as_text(value: object) -> str:
    """A value as made-with text: numbers in their shortest form (0.5, 1000), anything else as is."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def scoring_normalization(scores: xr.Dataset) -> str:
    """The heatmap normalisation a scores store was scored with (``open_scores`` checks that stores agree)."""
    return str(schema.json_attr(scores, schema.ATTR_SCORING)["normalization"])


def png_text(made_with: Mapping[str, object]) -> dict[str, str]:
    """PNG text chunks (``rationality:<key>``) of the made-with values."""
    return {f"{PNG_PREFIX}{key}": as_text(value) for key, value in made_with.items()}


def read_made_with(path: str | Path) -> dict[str, str]:
    """The made-with values of a table (CSV columns) or figure (PNG text), as text.

    A table column holding several values gives them joined by ``", "``; keys that were not
    written are absent.

    Raises:
        ValueError: for a file that is neither ``.csv`` nor ``.png``.
    """
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            return {key.removeprefix(PNG_PREFIX): value for key, value in image.text.items()
                    if key.startswith(PNG_PREFIX)}
    if path.suffix == ".csv":
        import pandas as pd

        table = pd.read_csv(path)
        return {key: ", ".join(as_text(value) for value in table[key].drop_duplicates())
                for key in TABLE_KEYS if key in table}
    raise ValueError(f"{path}: made-with values are read from .csv tables and .png figures only")
