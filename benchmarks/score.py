"""Benchmark of the CPU scoring stage against a straightforward per-sample loop.

Builds a synthetic cache store (random heatmaps) and mask store (random rectangles) at ViT-B/16
geometry, then times, in one run:

(a) the straightforward loop the paper's code uses: per sample and start layer, upsample the heatmap
    to the mask frame (bilinear, align_corners=False), min-max normalise, sum inside the mask / sum;
    timed on ``--loop-samples`` samples and extrapolated to all (it is linear in the sample count);
(b) ``rationality score`` from the mask store (Dask over Zarr chunks, each chunk's masks projected
    onto the token grid on the fly), on all samples;
(c) ``rationality project-masks`` (once per dataset, split, geometry and grid) and
(d) ``rationality score`` from those projections, what the workflow runs for every (model, method);
(e) re-scoring with a new threshold (the table from the scores store).

It checks that (b) equals (a) on the looped samples to 1e-5 and prints a Markdown table.

    python benchmarks/score.py                      # 50,000 samples, 12 start layers, 14x14, 224x224
    python benchmarks/score.py --samples 2000       # a quick look
    python benchmarks/score.py --tiny               # seconds: that it runs and agrees (the tests run this)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from rationality import schema
from rationality.report.tables import metric_view, rationality_table
from rationality.scoring.project import project_mask_store
from rationality.scoring.score import ScoringOptions, score_stores
from rationality.store import write_dataset


#: The sizes of ``--tiny``.
TINY = {"samples": 256, "loop_samples": 16, "chunk": 64}


def rectangle_masks(block: np.ndarray, frame: int, block_info=None) -> np.ndarray:
    """One random rectangle per sample (seeded by the block's position), bool [n, frame, frame]."""
    start = block_info[None]["array-location"][0][0]
    rng = np.random.default_rng(start)
    n = block.shape[0]
    masks = np.zeros((n, frame, frame), dtype=bool)
    corners = rng.integers(0, frame // 2, size=(n, 2))
    sizes = rng.integers(frame // 8, frame // 2, size=(n, 2))
    for mask, (y, x), (h, w) in zip(masks, corners, sizes):
        mask[y:y + h, x:x + w] = True
    return masks


def build_stores(root: Path, samples: int, layers: int, grid: int, frame: int, chunk: int) -> tuple[Path, Path]:
    """Write the synthetic cache and mask stores; returns their paths.

    Their attributes are those of the schema's mock stores (every attribute a store needs, so the
    benchmark keeps up with the schema), with this geometry.
    """
    geometry = {"resize": frame, "crop": frame}
    ids = [f"bench-{i:06d}" for i in range(samples)]
    heatmaps = da.random.default_rng(0).random((samples, 1, layers, grid, grid), chunks=(chunk, 1, layers, grid, grid))
    labels = np.zeros(samples, dtype=np.int32)
    cache = schema.cache_dataset(
        ids=ids, class_names=["a", "b"], explainers=["generic_attention"], start_layers=range(layers),
        grid=(grid, grid), logits=da.zeros((samples, 2), chunks=(chunk, 2), dtype=np.float32), labels=labels,
        heatmaps=heatmaps.astype(np.float32),
        attrs=schema.mock_cache(n_samples=1, n_classes=2, grid=(grid, grid), n_layers=layers, geometry=geometry).attrs)
    masks = da.map_blocks(rectangle_masks, da.zeros((samples, frame, frame), chunks=(chunk, frame, frame), dtype=bool),
                          frame=frame, dtype=bool)
    mask_store = schema.masks_dataset(ids=ids, masks=masks, labels=labels,
                                      attrs=schema.mock_masks(n_samples=1, size=(frame, frame), geometry=geometry).attrs)
    return write_dataset(cache, root / "cache.zarr"), write_dataset(mask_store, root / "masks.zarr")


def per_sample_loop(cache: xr.Dataset, masks: xr.Dataset, count: int) -> tuple[np.ndarray, float]:
    """(a): RMA [count, layers] the straightforward way, and the seconds it took."""
    heatmaps = cache[schema.HEATMAP].isel({schema.SAMPLE: slice(0, count), schema.EXPLAINER: 0}).values
    mask_values = masks[schema.MASK].isel({schema.SAMPLE: slice(0, count)}).values
    frame = mask_values.shape[1:]
    rma = np.empty(heatmaps.shape[:2])
    start = time.perf_counter()
    for i in range(count):
        mask = torch.from_numpy(mask_values[i]).float()
        for layer in range(heatmaps.shape[1]):
            heatmap = torch.from_numpy(heatmaps[i, layer]).double()[None, None]
            up = F.interpolate(heatmap, size=frame, mode="bilinear", align_corners=False)[0, 0]
            up = (up - up.min()) / (up.max() - up.min())
            rma[i, layer] = float((up * mask).sum() / up.sum())
    return rma, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--loop-samples", type=int, default=500, help="samples timed in the per-sample loop")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--frame", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=1024, help="samples per Zarr chunk")
    parser.add_argument("--workdir", help="where to build the stores (default: a temporary directory)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"{TINY['samples']} samples in chunks of {TINY['chunk']}, {TINY['loop_samples']} looped: "
                             "seconds, to check that it runs and agrees")
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            cache_path, masks_path = build_stores(root, args.samples, args.layers, args.grid, args.frame, args.chunk)
        build_seconds = time.perf_counter() - start

        with dask.config.set(scheduler="threads"):
            start = time.perf_counter()
            score_stores(cache_path, masks_path, root / "scores-from-masks.zarr", ScoringOptions(), progress=False)
            from_masks_seconds = time.perf_counter() - start
            start = time.perf_counter()
            projections_path = project_mask_store(masks_path, (args.grid, args.grid), root / "projections.zarr",
                                                  progress=False)
            project_seconds = time.perf_counter() - start
            start = time.perf_counter()
            scores_path = score_stores(cache_path, projections_path, root / "scores.zarr", ScoringOptions(),
                                       progress=False)
            ours_seconds = time.perf_counter() - start

        cache = xr.open_zarr(cache_path)
        masks = xr.open_zarr(masks_path)
        reference, loop_seconds = per_sample_loop(cache, masks, args.loop_samples)
        first = {schema.SAMPLE: slice(0, args.loop_samples), schema.EXPLAINER: 0}
        max_difference = max(float(np.abs(metric_view(xr.open_zarr(path), "rma")[schema.SCORE].isel(first).values - reference).max())
                              for path in (scores_path, root / "scores-from-masks.zarr"))
        loop_all_seconds = loop_seconds * args.samples / args.loop_samples

        start = time.perf_counter()
        rationality_table([scores_path], threshold=0.6)
        rescore_seconds = time.perf_counter() - start

        sizes = {name: sum(f.stat().st_size for f in (root / name).rglob("*") if f.is_file())
                 for name in ("cache.zarr", "masks.zarr", "projections.zarr", "scores.zarr")}

    heatmaps = args.samples * args.layers
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"sizes: {args.samples} samples, {args.layers} start layers, {args.grid}x{args.grid} heatmaps, "
          f"{args.frame}x{args.frame} masks, {args.chunk} samples per chunk (stores built in {build_seconds:.1f} s)\n")
    print("| what | seconds | heatmaps / s |")
    print("| --- | --- | --- |")
    print(f"| (a) per-sample loop, {args.loop_samples} samples timed, extrapolated to {args.samples} | "
          f"{loop_all_seconds:.1f} | {heatmaps / loop_all_seconds:,.0f} |")
    print(f"| (b) `rationality score` from the mask store, all {args.samples} | {from_masks_seconds:.1f} | "
          f"{heatmaps / from_masks_seconds:,.0f} |")
    print(f"| (c) `rationality project-masks`, once per geometry and grid | {project_seconds:.1f} | |")
    print(f"| (d) `rationality score` from the projections (the workflow's scoring stage) | {ours_seconds:.1f} | "
          f"{heatmaps / ours_seconds:,.0f} |")
    print(f"| (e) re-score with a new threshold (table from the scores store) | {rescore_seconds:.2f} | |")
    print(f"\nspeed-up (a)/(d): {loop_all_seconds / ours_seconds:.1f}x; (a)/(b): {loop_all_seconds / from_masks_seconds:.1f}x; "
          f"(a)/((c)+(d)): {loop_all_seconds / (project_seconds + ours_seconds):.1f}x; "
          f"max |(b or d) - (a)| = {max_difference:.2e}")
    print("bytes per sample: " + ", ".join(f"{name} {size / args.samples:,.0f}" for name, size in sizes.items()))
    if max_difference > 1e-5:
        raise SystemExit(f"scores differ from the per-sample loop by {max_difference:.2e} > 1e-5")


if __name__ == "__main__":
    main()
