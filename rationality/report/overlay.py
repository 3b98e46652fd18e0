"""Heatmaps drawn over their images: upsampling, one overlay panel, and the model-input image.

A heatmap [gy, gx] is upsampled to the model-input frame exactly as scoring does (bilinear,
``align_corners=False``, :func:`rationality.scoring.rma.bilinear_matrix`) and min-max normalised for
display. The image is the dataset reader's, named by the cache store's ``config`` attribute, taken
through the store's ``geometry`` (:class:`rationality.data.geometry.Geometry`), so it lands on the
pixels of the mask store; when the dataset cannot be read (moved, not on this machine) the overlay
shows the heatmap and the mask outline only.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from rationality import schema
from rationality.errors import RationalityError
from rationality.scoring.rma import bilinear_matrix

log = logging.getLogger(__name__)

#: Colour map and opacity of a heatmap drawn over an image.
HEATMAP_CMAP = "jet"
HEATMAP_ALPHA = 0.5


def upsample(heatmap: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling (align_corners=False) of ``heatmap`` [gy, gx] to ``frame`` (Y, X): float64 [Y, X]."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    u_y, u_x = bilinear_matrix(frame[0], heatmap.shape[0]), bilinear_matrix(frame[1], heatmap.shape[1])
    return u_y @ heatmap @ u_x.T


def display_heatmap(heatmap: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """The upsampled heatmap min-max normalised to [0, 1] (zeros when constant or not finite): [Y, X]."""
    up = upsample(np.nan_to_num(heatmap, nan=0.0, posinf=0.0, neginf=0.0), frame)
    low, high = up.min(), up.max()
    return (up - low) / (high - low) if high > low else np.zeros_like(up)


def draw_overlay(ax: Axes, heatmap: np.ndarray, mask: np.ndarray, image: np.ndarray | None = None) -> None:
    """Draw the image (if any), the heatmap over it, and the mask's outline.

    Args:
        heatmap: [gy, gx] token-grid heatmap.
        mask: bool [Y, X], the model-input frame.
        image: uint8 [Y, X, 3] model-input image, or None.
    """
    frame = mask.shape
    if image is not None:
        ax.imshow(image)
    ax.imshow(display_heatmap(heatmap, frame), cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0,
              alpha=HEATMAP_ALPHA if image is not None else 1.0)
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_image(ax: Axes, mask: np.ndarray, image: np.ndarray | None) -> None:
    """The image with the mask's outline; without an image, the mask itself."""
    ax.imshow(image if image is not None else mask, cmap=None if image is not None else "gray")
    if image is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def geometry_from_attr(value: dict[str, Any]):
    """The :class:`~rationality.data.geometry.Geometry` of a store's ``geometry`` attribute (``Geometry.to_dict``)."""
    from rationality.data.geometry import Geometry, PreCrop

    pre = PreCrop(value["pre_resize"], value["pre_crop"]) if "pre_resize" in value else None
    return Geometry(resize=value["resize"], crop=value["crop"], pre=pre)


def model_input_images(cache: xr.Dataset, sample_ids: Iterable[str]) -> dict[str, np.ndarray | None]:
    """The model-input images of ``sample_ids``, read through the cache store's dataset spec and geometry.

    Returns:
        sample id -> uint8 [crop, crop, 3], or None for every id when the dataset cannot be read
        (the reason is logged).
    """
    ids = list(sample_ids)
    config = schema.json_attr(cache, schema.ATTR_CONFIG)
    spec = config.get("dataset") if isinstance(config, dict) else None
    if not spec or not ids:
        return dict.fromkeys(ids)
    from rationality.data import create_dataset

    try:
        reader = create_dataset(spec["reader"], spec["root"], **spec.get("options", {}))
        samples = {sample.id: sample for sample in reader.samples(config["split"])}
        geometry = geometry_from_attr(schema.json_attr(cache, schema.ATTR_GEOMETRY))
        return {i: np.asarray(geometry.apply_image(reader.load_image(samples[i]))) for i in ids}
    except (RationalityError, KeyError, OSError) as exc:
        log.warning("images of %s are not readable (%s): drawing heatmaps and masks only", spec.get("root"), exc)
        return dict.fromkeys(ids)
