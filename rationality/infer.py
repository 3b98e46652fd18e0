"""The GPU stage: per-sample logits and ground-truth-class heatmaps of a checkpoint, into a cache store.

The store is written in chunks of ``chunk_size`` samples into ``<out>.partial``; a re-run after a
crash resumes at the first unwritten chunk, and the store is renamed to ``<out>`` only when complete.
Runs on the CPU when no GPU is there.

What keeps the device busy:

* the weights are frozen, so autograd keeps only what the attention gradients need
  (see :mod:`rationality.explain.batch`);
* images are decoded in ``num_workers`` DataLoader processes into pinned memory and copied to the
  GPU without blocking;
* the results of a batch are copied back while the next batch is already computing (nothing waits for
  the GPU until a batch's results are stored), and Zarr compression and writing run in a writer thread;
* a CUDA out-of-memory error halves the batch and the stage goes on with the smaller batch (the same
  heatmaps: samples do not interact; the chunks, and so resuming, do not depend on the batch size).

On a GPU the log ends with the busy time: the summed time of the batches' compute, measured with
CUDA events, over the wall time of the loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import dask.array as da
import numpy as np
import torch
from torch.utils.data import DataLoader

from rationality import __version__, schema
from rationality.cpus import loader_workers
from rationality.data.base import create_dataset, split_samples
from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.explain import create_explainer, explain_batch
from rationality.explain.base import Explainer
from rationality.methods import create_method
from rationality.models.checkpoint import file_sha256, load_checkpoint
from rationality.models.heads import ImageClassifier
from rationality.progress import Progress
from rationality.store import BatchedStoreWriter

#: Chunks computed but not yet written that the compute may run ahead of the writer thread.
WRITE_QUEUE_CHUNKS = 2


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_inference(checkpoint: str | Path, dataset: dict[str, Any], split: str, out: str | Path, *,
                  explainers: list[str], batch_size: int = 32, device: str = "auto",
                  num_workers: int = 0, precision: str = "fp32", model_name: str | None = None,
                  method_name: str | None = None, corruption: str = schema.CLEAN, severity: int = 0,
                  chunk_size: int | None = None) -> Path:
    """Explain every sample of ``split`` and write the cache store ``out``; returns its path.

    Args:
        checkpoint: a file written by the fine-tuning stage.
        dataset: dataset spec ``{name, reader, root, options}``; its class names must equal the
            checkpoint's.
        explainers: registered explainer names, in the order of the ``explainer`` dimension.
        batch_size: images per forward and backward pass (halved after a CUDA out-of-memory error);
            does not change results beyond float rounding.
        num_workers: image-decoding processes.
        precision: a name of :data:`rationality.explain.batch.PRECISIONS`; part of the store's config,
            as it changes every heatmap slightly.
        model_name, method_name: the config's names for the store's attributes (default: from the
            checkpoint).
        corruption, severity: what the dataset's images went through (store attributes; the
            dataset spec is what applies them).
        chunk_size: samples per Zarr chunk, and so per resume step (default :data:`schema.SAMPLE_CHUNK`);
            the published store is re-chunked to :data:`schema.SAMPLE_CHUNK` when it differs.
    """
    checkpoint = Path(checkpoint)
    explainer_objects = [create_explainer(name) for name in explainers]
    classifier, meta = load_checkpoint(checkpoint)
    classifier.requires_grad_(False)
    adapter = classifier.adapter
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    if list(reader.class_names) != meta["class_names"]:
        raise ConfigError(f"{checkpoint} was trained for classes {meta['class_names'][:5]}… but dataset "
                          f"{dataset['root']} has {list(reader.class_names)[:5]}…")
    samples = split_samples(reader, split, dataset["name"])
    mean, std = adapter.normalization
    images = ImageDataset(reader, samples, adapter.geometry, mean, std)
    checkpoint_sha256 = file_sha256(checkpoint)
    dataset_provenance = {schema.ATTR_DATASET_ROOT: str(reader.root.resolve()),
                          schema.ATTR_DATASET_FINGERPRINT: reader.fingerprint(split)}
    method = create_method(meta["method"])
    n, n_classes, n_layers = len(samples), len(reader.class_names), adapter.num_blocks
    config = {"model": meta["model"], "method": meta["method"], "dataset": dataset, "split": split,
              "explainers": explainers, "precision": precision}
    template = schema.cache_dataset(
        ids=[s.id for s in samples], class_names=reader.class_names, explainers=explainers,
        start_layers=range(n_layers), grid=adapter.grid,
        logits=da.zeros((n, n_classes), dtype=np.float32),
        labels=da.zeros((n,), dtype=np.int32),
        heatmaps=da.zeros((n, len(explainers), n_layers, *adapter.grid), dtype=np.float32),
        attrs=schema.provenance(
            schema.StoreKind.CACHE, model=model_name or meta["model"]["name"], dataset=dataset["name"],
            split=split, method=method_name or method.kind, method_kind=method.kind,
            paper_start_layer=0 if method.paper_start_layer == "first" else n_layers - 1,
            geometry=adapter.geometry.to_dict(), image_normalization={"mean": list(mean), "std": list(std)},
            checkpoint_sha256=checkpoint_sha256, config=config, corruption=corruption, severity=severity,
            seed=meta.get("seed"), **dataset_provenance),
    )
    fingerprint = hashlib.sha256(json.dumps(
        {"checkpoint": checkpoint_sha256, "config": config, "version": __version__, **dataset_provenance},
        sort_keys=True).encode()).hexdigest()
    chunk_size = chunk_size or schema.SAMPLE_CHUNK
    with BatchedStoreWriter(out, template, chunk_size, fingerprint) as writer:
        pending = writer.pending_batches
        if writer.n_batches - len(pending):
            first = writer.batch_slice(pending[0]).start if pending else n
            print(f"resuming {writer.partial}: {writer.n_batches - len(pending)} of {writer.n_batches} chunks "
                  f"({chunk_size} samples each) are written; continuing at sample {first} of {n}", file=sys.stderr)
        torch_device = resolve_device(device)
        compute = _BatchComputer(classifier.to(torch_device), explainer_objects, precision, batch_size)
        chunks = {chunk: writer.batch_slice(chunk) for chunk in pending}
        loader = DataLoader(images, batch_sampler=list(_batches(chunks, batch_size)),
                            num_workers=loader_workers(num_workers),
                            pin_memory=torch_device.type == "cuda")
        buffers = _ChunkBuffers(chunks, n_classes, (len(explainers), n_layers, *adapter.grid))
        with (Progress(sum(s.stop - s.start for s in chunks.values()), f"infer {out}", "images") as progress,
              _WriterThread(writer) as write):

            def store(batch: _BatchResult) -> None:
                for chunk, arrays in buffers.add(*batch.arrays()):
                    write(chunk, arrays)
                progress.update(len(batch.positions))

            unstored: list[_BatchResult] = []  # batch k + 1 is launched before batch k is stored
            try:
                for pixels, labels, positions in loader:
                    unstored.append(compute(pixels.to(torch_device, non_blocking=True), labels, positions))
                    if len(unstored) == 2:
                        store(unstored.pop(0))
            finally:  # also when a later batch failed: what was computed is kept
                while unstored:
                    store(unstored.pop(0))
        busy = compute.busy_report()
        if busy is not None:
            print(busy, file=sys.stderr)
        return writer.finish()


def _batches(chunks: dict[int, slice], batch_size: int) -> Iterator[list[int]]:
    """Sample positions per batch, in order; a batch never spans two chunks."""
    for region in chunks.values():
        for start in range(region.start, region.stop, batch_size):
            yield list(range(start, min(start + batch_size, region.stop)))


class _BatchComputer:
    """:func:`explain_batch` with the CUDA out-of-memory back-off and busy-time measurement.

    After an out-of-memory error the batch is computed in pieces of half its size (again halved if one of
    them runs out of memory), and the smaller size is kept for every later batch.
    """

    def __init__(self, classifier: ImageClassifier, explainers: list[Explainer], precision: str,
                 batch_size: int) -> None:
        self.classifier, self.explainers, self.precision = classifier, explainers, precision
        self.batch_size = batch_size
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._started = time.perf_counter()

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> "_BatchResult":
        """Launch one loaded batch (pixels on the device, labels [B] and sample positions [B] on the CPU).

        On a GPU the results are copied to the host without waiting; :meth:`_BatchResult.arrays` waits.
        """
        timed = pixels.device.type == "cuda"
        if timed:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        logits, heatmaps = self._in_pieces(pixels, labels.to(pixels.device, non_blocking=True))
        if timed:
            events[1].record()
            self._events.append(events)
        copied = torch.cuda.Event() if timed else None
        logits, heatmaps = logits.to("cpu", non_blocking=True), heatmaps.to("cpu", non_blocking=True)
        if copied is not None:
            copied.record()
        return _BatchResult(positions, labels, logits, heatmaps, copied)

    def _in_pieces(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self._explain(pixels[i:i + self.batch_size], labels[i:i + self.batch_size])
                 for i in range(0, len(labels), self.batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _explain(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return explain_batch(self.classifier, pixels, labels, self.explainers, self.precision)
        except torch.cuda.OutOfMemoryError:
            if len(labels) == 1:
                raise
        torch.cuda.empty_cache()
        self.batch_size = len(labels) // 2
        print(f"CUDA out of memory at a batch of {len(labels)} images: continuing with batches of "
              f"{self.batch_size}", file=sys.stderr)
        return self._in_pieces(pixels, labels)

    def busy_report(self) -> str | None:
        """On a GPU, a line with the batches' summed compute time over the loop's wall time."""
        if not self._events:
            return None
        torch.cuda.synchronize()
        wall = time.perf_counter() - self._started
        busy = sum(start.elapsed_time(end) for start, end in self._events) / 1000
        return f"GPU busy {busy:.1f} s of {wall:.1f} s wall ({100 * busy / wall:.0f}%)"


@dataclasses.dataclass
class _BatchResult:
    """A launched batch: its sample positions [B] and labels [B], and its logits [B, C] and heatmaps
    [B, E, L, gy, gx] on the host once ``copied`` (a CUDA event; None on the CPU) has completed."""

    positions: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    heatmaps: torch.Tensor
    copied: torch.cuda.Event | None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(positions, logits, labels, heatmaps) as numpy arrays, after waiting for the copy."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.positions.numpy(), self.logits.numpy(), self.labels.numpy(), self.heatmaps.numpy()


class _ChunkBuffers:
    """Collects the batches of each chunk; :meth:`add` yields (chunk, arrays) once a chunk is complete."""

    def __init__(self, chunks: dict[int, slice], n_classes: int, heatmap_shape: tuple[int, ...]) -> None:
        self._regions = chunks
        self._chunk_of = {position: chunk for chunk, region in chunks.items()
                          for position in range(region.start, region.stop)}
        self._shapes = {schema.LOGITS: ((n_classes,), np.float32), schema.LABEL: ((), np.int32),
                        schema.HEATMAP: (heatmap_shape, np.float32)}
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._missing: dict[int, int] = {}

    def add(self, positions: np.ndarray, logits: np.ndarray, labels: np.ndarray,
            heatmaps: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Place one batch (sample ``positions`` [B] of a single chunk, and their arrays)."""
        chunk = self._chunk_of[int(positions[0])]
        region = self._regions[chunk]
        if chunk not in self._arrays:
            size = region.stop - region.start
            self._arrays[chunk] = {name: np.empty((size, *shape), dtype) for name, (shape, dtype) in self._shapes.items()}
            self._missing[chunk] = size
        arrays, rows = self._arrays[chunk], positions - region.start
        arrays[schema.LOGITS][rows] = logits
        arrays[schema.LABEL][rows] = labels
        arrays[schema.HEATMAP][rows] = heatmaps
        self._missing[chunk] -= len(rows)
        if self._missing[chunk] == 0:
            del self._missing[chunk]
            yield chunk, self._arrays.pop(chunk)


class _WriterThread:
    """A context whose value writes a chunk through a background thread; exits after the last write.

    The compute runs at most :data:`WRITE_QUEUE_CHUNKS` chunks ahead of the writes; an error in the
    thread is raised in the caller at its next write or at exit.
    """

    def __init__(self, writer: BatchedStoreWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[tuple[int, dict[str, np.ndarray]] | None] = queue.Queue(WRITE_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zarr-writer", daemon=True)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(*item)
                except BaseException as exc:  # re-raised in the caller
                    self._error = exc

    def _put(self, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((chunk, arrays))

    def __enter__(self) -> Callable[[int, dict[str, np.ndarray]], None]:
        self._thread.start()
        return self._put

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error
