"""Heatmap galleries: the same samples across methods (the paper's Figure 3), and one sample in detail.

:func:`select_samples` picks the samples, from scores stores of one (model, dataset):

* ``all_correct``: samples every method predicts correctly (the paper's Figure 3), so that only the
  evidence differs;
* ``changed``: samples whose quadrant (RR, RW, WR, WW) under a fine-tuned method differs from the
  zero-shot one (the store whose ``method_kind`` is ``zero_shot``), e.g. right for the right reason
  before fine-tuning and for the wrong one after.

Eligible samples are taken round-robin over classes (the first of each class, then the second, ...;
within a class by sample id), so a small gallery shows several classes, and the choice is stable.

Layout of :func:`gallery_figure`: one row per sample (labelled with its id and class), one column
for the image with the mask outline, then one column per method with its heatmap over the image and
the sample's quadrant and its primary metric's score (RMA by default) beneath. :func:`show_figure` (``rationality show``) draws one sample:
one column per cache store, one row per (explainer, start-layer policy), RMA computed on the spot
from the mask store, so it needs no scores store.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from rationality import schema
from rationality.errors import StoreError
from rationality.report.figures import empty_figure, panel_figure, save_figure
from rationality.report.made_with import scoring_normalization
from rationality.report.overlay import draw_image, draw_overlay, model_input_images
from rationality.report.tables import (
    START_LAYER_POLICIES, align_samples, method_label, metric_view, open_scores, policy_start_layer, primary_metric,
    store_explainer, store_run,
)
from rationality.scoring.localisation import evidence_rule, metric_class
from rationality.scoring.metrics import DEFAULT_THRESHOLD, UndefinedPolicy, outcome_codes, outcome_names
from rationality.scoring.rma import MaskProjector, Normalization, relevance_mass_accuracy

SELECTIONS: tuple[str, ...] = ("all_correct", "changed")
DEFAULT_SAMPLES = 6
#: (width, height) in inches of one image panel.
IMAGE_PANEL = (2.0, 2.3)


def _column(scores: xr.Dataset, explainer: str | None, policy: str) -> dict[str, object]:
    """The (explainer, start layer) selection of one store's heatmaps (StoreError if it has no such explainer)."""
    return {schema.EXPLAINER: store_explainer(scores, explainer), schema.START_LAYER: policy_start_layer(policy, scores)}


def outcomes(stores: Sequence[xr.Dataset], explainer: str | None = None, policy: str = "paper",
             threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid") -> np.ndarray:
    """:class:`~rationality.scoring.metrics.Outcome` codes [store, sample] of aligned scores stores, by their
    primary metric at ``threshold``."""
    views = [metric_view(s) for s in stores]
    return np.stack([
        outcome_codes(v[schema.SCORE].sel(_column(s, explainer, policy)).values,
                      v[schema.EDGE_CASE].sel(_column(s, explainer, policy)).values,
                      s[schema.CORRECT].values, threshold, undefined, **evidence_rule(primary_metric(s)))
        for s, v in zip(stores, views)])


def round_robin(ids: np.ndarray, labels: np.ndarray) -> list[str]:
    """``ids`` ordered first of each class, second of each class, ...; by id within a class, classes by label."""
    ids, labels = np.asarray(ids, dtype=str), np.asarray(labels)
    by_class = np.lexsort((ids, labels))
    rank = np.empty(len(ids), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(labels[by_class])) + 1]
    rank[by_class] = np.arange(len(ids)) - np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    return [str(i) for i in ids[np.lexsort((ids, labels, rank))]]


def select_samples(stores: Sequence[xr.Dataset], selection: str = "all_correct", count: int = DEFAULT_SAMPLES,
                   explainer: str | None = None, policy: str = "paper", threshold: float = DEFAULT_THRESHOLD,
                   undefined: UndefinedPolicy = "invalid") -> list[str]:
    """Up to ``count`` sample ids for a gallery of ``stores`` (scores stores of one model and dataset).

    Raises:
        ValueError: for an unknown selection.
        StoreError: different samples in the stores, a store without ``explainer``'s heatmaps, or
            ``changed`` without exactly one zero-shot store.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    aligned = align_samples(stores, "a gallery")
    for store in aligned:
        store_explainer(store, explainer)
    if selection == "all_correct":
        eligible = np.all([s[schema.CORRECT].values for s in aligned], axis=0)
    else:
        kinds = [s.attrs[schema.ATTR_METHOD_KIND] for s in aligned]
        zero_shot = [i for i, kind in enumerate(kinds) if kind == "zero_shot"]
        if len(zero_shot) != 1 or len(aligned) < 2:
            raise StoreError(f"selection 'changed' compares one zero-shot store with the others; got method kinds "
                             f"{kinds}")
        codes = outcomes(aligned, explainer, policy, threshold, undefined)
        eligible = np.any(codes != codes[zero_shot[0]], axis=0)
    ids = aligned[0].indexes[schema.SAMPLE].to_numpy()
    return round_robin(ids[eligible], aligned[0][schema.LABEL].values[eligible])[:count]


def pair_stores(scores: Sequence[xr.Dataset], caches: Sequence[xr.Dataset]) -> list[tuple[xr.Dataset, xr.Dataset]]:
    """Each scores store with the cache store of the same (model, dataset, method), in the scores' order.

    Raises:
        StoreError: naming the run of a scores store without its cache.
    """
    keys = (schema.ATTR_MODEL, schema.ATTR_DATASET, schema.ATTR_METHOD, schema.ATTR_CORRUPTION, schema.ATTR_SEVERITY)
    by_key = {tuple(str(c.attrs[k]) for k in keys): c for c in caches}
    pairs = []
    for s in scores:
        key = tuple(str(s.attrs[k]) for k in keys)
        if key not in by_key:
            raise StoreError(f"no cache store for the scores of {'/'.join(key[:3])}")
        pairs.append((s, by_key[key]))
    return pairs


def gallery_figure(pairs: Sequence[tuple[xr.Dataset, xr.Dataset]], masks: xr.Dataset, sample_ids: Sequence[str],
                   images: Mapping[str, np.ndarray | None], explainer: str | None = None, policy: str = "paper",
                   threshold: float = DEFAULT_THRESHOLD, undefined: UndefinedPolicy = "invalid",
                   selection: str = "all_correct") -> Figure:
    """The gallery of ``sample_ids`` (see the module docstring for the layout).

    Args:
        pairs: (scores, cache) stores per method, from :func:`pair_stores`.
        masks: the mask store of the caches' dataset and geometry.
        images: sample id -> uint8 [Y, X, 3] model-input image, or None.
    """
    if not sample_ids:
        return empty_figure(f"no sample matches the selection '{selection}'")
    scores = align_samples([s for s, _ in pairs], "a gallery")
    codes = outcomes(scores, explainer, policy, threshold, undefined)
    position = {str(i): k for k, i in enumerate(scores[0].indexes[schema.SAMPLE])}
    class_names = pairs[0][1].coords[schema.CLASS].values
    figure, axes = panel_figure(len(sample_ids), 1 + len(pairs), panel=IMAGE_PANEL)
    for row, sample_id in zip(axes, sample_ids):
        mask = masks[schema.MASK].sel({schema.SAMPLE: sample_id}).values
        label = int(scores[0][schema.LABEL].values[position[sample_id]])
        draw_image(row[0], mask, images.get(sample_id))
        row[0].set_ylabel(f"{sample_id}\n{class_names[label]}", fontsize="small")
        for m, (ax, s, (_, cache)) in enumerate(zip(row[1:], scores, pairs)):
            column = _column(s, explainer, policy)
            draw_overlay(ax, cache[schema.HEATMAP].sel({schema.SAMPLE: sample_id, **column}).values, mask,
                         images.get(sample_id))
            value = float(metric_view(s)[schema.SCORE].sel({schema.SAMPLE: sample_id, **column}))
            outcome = outcome_names(codes[m, position[sample_id]])
            ax.set_xlabel(f"{outcome} · {metric_class(primary_metric(s)).title} {value:.2f}", fontsize="small")
    axes[0, 0].set_title("image", fontsize="medium")
    for ax, (s, _) in zip(axes[0, 1:], pairs):
        ax.set_title(f"{method_label(s)} (s={_column(s, explainer, policy)[schema.START_LAYER]})", fontsize="medium")
    first = scores[0]
    figure.suptitle(f"{first.attrs[schema.ATTR_MODEL]} on {first.attrs[schema.ATTR_DATASET]}: {selection} "
                    f"(threshold {threshold:g}, start layer: {policy})", fontsize="medium")
    return figure


def show_figure(caches: Sequence[xr.Dataset], masks: xr.Dataset, sample_id: str,
                images: Sequence[np.ndarray | None], explainers: Sequence[str] | None = None,
                policies: Sequence[str] = START_LAYER_POLICIES, normalization: Normalization = "minmax") -> Figure:
    """One sample's heatmaps across cache stores (see the module docstring for the layout).

    Args:
        caches: cache stores holding ``sample_id`` (e.g. one per method).
        masks: a mask store holding ``sample_id`` in the caches' geometry.
        images: each cache's model-input image of the sample, or None.
        explainers: rows' explainers (default: every explainer all the caches hold, in the first one's order).
        normalization: how RMA is computed for the captions (see :mod:`rationality.scoring.rma`).

    Raises:
        StoreError: a store does not hold ``sample_id``, or a cache holds no heatmaps of a given explainer
            (without ``explainers``: the caches hold none in common).
    """
    for store in (*caches, masks):
        if sample_id not in store.indexes[schema.SAMPLE]:
            raise StoreError(f"sample {sample_id!r} is not in the {store.attrs[schema.ATTR_KIND]} store of "
                             f"{store.attrs.get(schema.ATTR_DATASET)} ({store.sizes[schema.SAMPLE]} samples)")
    if explainers is None:
        held = [{str(e) for e in cache.coords[schema.EXPLAINER].values} for cache in caches]
        explainers = [str(e) for e in caches[0].coords[schema.EXPLAINER].values if all(str(e) in h for h in held)]
        if not explainers:
            raise StoreError(f"the caches of {', '.join(store_run(c) for c in caches)} hold no explainer in common")
    for cache in caches:
        for explainer in explainers:
            store_explainer(cache, explainer)
    rows = [(explainer, policy) for explainer in explainers for policy in policies]
    mask = masks[schema.MASK].sel({schema.SAMPLE: sample_id}).values
    figure, axes = panel_figure(len(rows), 1 + len(caches), panel=IMAGE_PANEL)
    draw_image(axes[0, 0], mask, images[0])
    axes[0, 0].set_title("image", fontsize="medium")
    for ax in axes[1:, 0]:
        ax.set_axis_off()
    for c, (cache, image) in enumerate(zip(caches, images), start=1):
        sample = cache.sel({schema.SAMPLE: sample_id})
        label, prediction = int(sample[schema.LABEL]), int(np.argmax(sample[schema.LOGITS].values))
        names = cache.coords[schema.CLASS].values
        verdict = "correct" if prediction == label else f"wrong: {names[prediction]}"
        axes[0, c].set_title(f"{method_label(cache)}\n{names[label]} ({verdict})", fontsize="medium")
        for r, (explainer, policy) in enumerate(rows):
            ax = axes[r, c]
            layer = policy_start_layer(policy, cache)
            heatmap = sample[schema.HEATMAP].sel({schema.EXPLAINER: explainer}).isel({schema.START_LAYER: layer}).values
            draw_overlay(ax, heatmap, mask, image)
            projector = MaskProjector(frame=mask.shape, grid=heatmap.shape)
            rma, edge = relevance_mass_accuracy(heatmap[None], projector.project(mask[None]), mask.sum()[None],
                                                projector, normalization)
            value = f"RMA {rma[0]:.2f}" if edge[0] == schema.EdgeCase.OK else schema.EdgeCase(edge[0]).name.lower()
            ax.set_xlabel(f"{explainer}\n{policy} (s={layer}) · {value}", fontsize="x-small")
    figure.suptitle(f"sample {sample_id}", fontsize="medium")
    return figure


def write_gallery(score_paths: Sequence[str], cache_paths: Sequence[str], masks_path: str, out: str,
                  selection: str = "all_correct", count: int = DEFAULT_SAMPLES, explainer: str | None = None,
                  policy: str = "paper", threshold: float = DEFAULT_THRESHOLD,
                  undefined: UndefinedPolicy = "invalid") -> list[str]:
    """Select samples from the scores stores and write their gallery PNG to ``out``; returns the sample ids."""
    caches = [schema.open_store(path, schema.StoreKind.CACHE) for path in cache_paths]
    pairs = pair_stores(open_scores(score_paths), caches)
    masks = schema.open_store(masks_path, schema.StoreKind.MASKS)
    ids = select_samples([s for s, _ in pairs], selection, count, explainer, policy, threshold, undefined)
    images = model_input_images(pairs[0][1], ids)
    stores = [s for s, _ in pairs]
    save_figure(gallery_figure(pairs, masks, ids, images, explainer, policy, threshold, undefined, selection), out,
                made_with={"explainer": store_explainer(stores[0], explainer), "start_layer_policy": policy,
                           "threshold": threshold, "undefined_policy": undefined,
                           "normalization": scoring_normalization(stores[0])})
    return ids


def write_show(sample_id: str, cache_paths: Sequence[str], masks_path: str, out: str,
               explainers: Sequence[str] | None = None, policies: Sequence[str] = START_LAYER_POLICIES,
               normalization: Normalization = "minmax") -> None:
    """Write :func:`show_figure` of one sample to ``out`` (images read where each cache's dataset is readable)."""
    caches = [schema.open_store(path, schema.StoreKind.CACHE) for path in cache_paths]
    masks = schema.open_store(masks_path, schema.StoreKind.MASKS)
    images = [model_input_images(cache, [sample_id])[sample_id] if sample_id in cache.indexes[schema.SAMPLE] else None
              for cache in caches]
    save_figure(show_figure(caches, masks, sample_id, images, explainers, policies, normalization), out)
