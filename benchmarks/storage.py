"""Bytes per sample of every store kind at the geometries of a config, measured with the real writers.

For each (model grid, dataset classes) of the config's runs it writes a mock cache store
(:func:`rationality.schema.mock_cache`: random heatmaps and logits, the config's explainers, one
start layer per ViT-B block) and a mock mask store of rectangles at the model-input frame
(:func:`rationality.schema.mock_masks`) batch by batch with the workflow's store writer, projects
the masks onto the grid (``rationality project-masks``' function) and scores the cache (``rationality
score``' function), and divides each store's bytes on disk by the samples. Random heatmaps are
the worst case of compression (real heatmaps are smooth); rectangles are the best case of masks
(ImageNet and Stanford Dogs boxes are rectangles, CUB and Caltech-101 outlines are not).

    python benchmarks/storage.py                          # config/paper.yaml, 2,048 samples per store
    python benchmarks/storage.py --tiny                   # tiny mode (--samples 64 --out -): print, write nothing

Writes ``benchmarks/results/storage.json``, which ``python -m rationality.report.readme`` reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

import dask.array as da
import xarray as xr

from rationality import schema
from rationality.data.masks import MASK_BATCH
from rationality.report.readme import VIT_B_BLOCKS, cache_key, storage_geometries
from rationality.resolve import load_config_files
from rationality.scoring.project import project_mask_store
from rationality.scoring.score import ScoringOptions, score_stores
from rationality.store import BatchedStoreWriter

REPO = Path(__file__).resolve().parents[1]


def write_in_batches(ds: xr.Dataset, path: Path, batch_size: int) -> Path:
    """Write ``ds`` as the GPU stage and the mask builder write their stores: batch by batch into a
    partial store, then published (rechunked to :data:`rationality.schema.SAMPLE_CHUNK`)."""
    template = xr.Dataset({name: (var.dims, da.zeros(var.shape, dtype=var.dtype)) for name, var in ds.data_vars.items()},
                          coords=ds.coords, attrs=ds.attrs)
    writer = BatchedStoreWriter(path, template, batch_size, fingerprint="storage benchmark")
    for batch in writer.pending_batches:
        part = writer.batch_slice(batch)
        writer.write(batch, {name: var.values[part] for name, var in ds.data_vars.items() if schema.SAMPLE in var.dims})
    return writer.finish()


def store_bytes(path: Path) -> int:
    """Bytes of every file under a store directory."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def measure(config: dict, samples: int, workdir: Path) -> dict[str, dict[str, float]]:
    """Bytes per sample of each store kind, keyed as :mod:`rationality.report.readme` looks them up:
    masks per frame, projections per grid, caches per (grid, classes), scores per (explainers, layers)."""
    explainers = tuple(config["explainers"])
    result: dict[str, dict[str, float]] = {"cache": {}, "masks": {}, "projections": {}, "scores": {}}
    masks: dict[int, Path] = {}
    projections: dict[tuple[int, int], Path] = {}
    for frame, grid, classes in storage_geometries(config):
        if frame not in masks:
            masks[frame] = write_in_batches(schema.mock_masks(samples, 1, (frame, frame), seed=1),
                                            workdir / f"masks-{frame}.zarr", MASK_BATCH)
            result["masks"][f"{frame}x{frame}"] = store_bytes(masks[frame]) / samples
        if (frame, grid) not in projections:
            projections[frame, grid] = project_mask_store(masks[frame], (grid, grid),
                                                          workdir / f"projections-{frame}-{grid}.zarr", progress=False)
            result["projections"][f"{grid}x{grid}"] = store_bytes(projections[frame, grid]) / samples
        mock = schema.mock_cache(samples, classes, (grid, grid), VIT_B_BLOCKS, explainers, seed=1,
                                 geometry={"resize": frame, "crop": frame})
        mock[schema.LABEL] = mock[schema.LABEL] * 0  # the mock masks' labels (one class: the masks do not depend on it)
        cache = write_in_batches(mock, workdir / f"cache-{frame}-{grid}-{classes}.zarr", config["infer"]["batch_size"])
        result["cache"][cache_key(grid, classes, len(explainers))] = store_bytes(cache) / samples
        scores = score_stores(cache, projections[frame, grid], workdir / f"scores-{frame}-{grid}-{classes}.zarr",
                              ScoringOptions())
        result["scores"][f"e{len(explainers)}-l{VIT_B_BLOCKS}"] = store_bytes(scores) / samples
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "paper.yaml"))
    parser.add_argument("--samples", type=int, default=2 * schema.SAMPLE_CHUNK, help="samples per mock store")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "storage.json"),
                        help="JSON to write, or - to print only")
    parser.add_argument("--tiny", action="store_true", help="--samples 64 --out -: seconds (the tests run this)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.out = 64, "-"
    config = load_config_files([args.config])
    with tempfile.TemporaryDirectory() as workdir:
        measured = measure(config, args.samples, Path(workdir))
    report = {"source": "benchmarks/storage.py", "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, Python {platform.python_version()}", "samples": args.samples,
              "bytes_per_sample": measured}
    text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
