"""Crash-safe writing of Zarr stores.

A store is always written to ``<path>.partial`` and renamed to ``<path>`` only once every array
is complete and the store validates against :mod:`rationality.schema` (every chunk written, every
attribute there), so a killed job never leaves a store that Snakemake or the scorer would take as
finished. One process writes a store at a time: a writer holds an exclusive lock on ``<path>.lock``
while it writes, and a second writer of the same store fails at once. :class:`BatchedStoreWriter` writes batch by batch, one Zarr chunk per batch (a crash never
leaves a half-written chunk of a finished batch), records finished batches in a small progress file
beside the partial store, resumes from there after a crash when the job's fingerprint (its inputs and
options) is unchanged, and re-chunks to :data:`schema.SAMPLE_CHUNK` samples when it publishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import xarray as xr
import zarr

from rationality import schema
from rationality.errors import StoreError
from rationality.progress import DaskProgress
from rationality.schema import SAMPLE

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
PROGRESS_SUFFIX = ".progress.json"
RECHUNK_SUFFIX = ".rechunking"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of store ``path`` (``<path>.lock``, holding the writer's process id).

    The lock is the operating system's (``flock``): a killed writer releases it. The file is removed
    when the writer finishes.

    Raises:
        StoreError: another process writes the store.
    """
    lock = path.with_name(path.name + LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(f"{path}: another process (pid {holder}) is writing this store; wait for it or stop "
                             f"it (lock file {lock})") from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # the previous writer removed the file between our open and lock: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def check_complete(partial: Path) -> None:
    """Raise StoreError unless the store at ``partial`` validates and every chunk of every array is written."""
    group = zarr.open_group(str(partial), mode="r")
    missing = {name: array.nchunks - array.nchunks_initialized for name, array in group.arrays()
               if array.nchunks_initialized < array.nchunks}
    if missing:
        raise StoreError(f"{partial}: not published, chunks were never written: "
                         + ", ".join(f"{name} ({count} of its chunks)" for name, count in sorted(missing.items())))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        ds = xr.open_zarr(partial, consolidated=False)
    kind = ds.attrs.get(schema.ATTR_KIND)
    if kind not in {k.value for k in schema.StoreKind}:
        raise StoreError(f"{partial}: not published, attribute {schema.ATTR_KIND!r} is {kind!r}")
    schema.validate(ds, schema.StoreKind(kind), source=f"{partial} (not published)")


def _publish(partial: Path, path: Path) -> None:
    """Check the finished ``partial`` store, consolidate its metadata, move it to ``path``, drop its
    progress file.

    Consolidated metadata lets ``xarray.open_zarr(path)`` open the store with one read and without
    listing the directory (where Snakemake leaves a ``.snakemake_timestamp`` file).

    Raises:
        StoreError: the store is incomplete or invalid (:func:`check_complete`); nothing is published.
    """
    check_complete(partial)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(str(partial))
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)
    partial.with_name(partial.name + PROGRESS_SUFFIX).unlink(missing_ok=True)


def write_dataset(ds: xr.Dataset, path: str | Path, *, progress: bool = False,
                  chunks: Mapping[str, int] | None = None) -> Path:
    """Write a whole (possibly Dask-backed) dataset crash-safely, holding the store's lock; returns the path.

    Dask arrays are computed chunk by chunk as they are written, under whatever scheduler is active;
    Zarr chunks follow the Dask chunks unless ``chunks`` (per dimension) says otherwise. Arrays are
    compressed as :func:`schema.encoding` says.

    Args:
        progress: report the computation's progress (:class:`~rationality.progress.DaskProgress`).
        chunks: Zarr chunk length per dimension (the Dask chunks must align with them).

    Raises:
        StoreError: another process writes the store, or the written store does not validate.
    """
    path = Path(path)
    with store_lock(path):
        return _write_dataset(ds, path, partial_path(path), progress=progress, chunks=chunks)


def _write_dataset(ds: xr.Dataset, path: Path, staging: Path, *, progress: bool = False,
                   chunks: Mapping[str, int] | None = None) -> Path:
    """:func:`write_dataset` through ``staging``, for a caller that holds the lock."""
    if staging.exists():
        shutil.rmtree(staging)
    path.parent.mkdir(parents=True, exist_ok=True)
    with DaskProgress(f"write {path}") if progress else contextlib.nullcontext():
        ds.to_zarr(staging, mode="w", consolidated=False, encoding=schema.encoding(ds, chunks=chunks),
                   write_empty_chunks=True)
    _publish(staging, path)
    return path


class BatchedStoreWriter:
    """Writes the per-sample arrays of a store one batch of samples at a time.

    Holds the store's lock (:func:`store_lock`) from construction until :meth:`finish` or :meth:`close`;
    use it as a context manager so that an error releases the lock too.

    Args:
        path: final store path.
        template: the complete dataset with its coordinates and attributes; per-sample arrays may be
            lazy (e.g. ``dask.array.zeros``) since only their shape, dtype and chunks are used.
        batch_size: samples per batch; batch ``b`` covers samples ``[b * batch_size, (b+1) * batch_size)``.
            Arrays along ``sample`` are chunked by ``batch_size`` so that batches never share a chunk.
        fingerprint: identifies the job (inputs and options); a partial store with another
            fingerprint is discarded instead of resumed.

    Raises:
        StoreError: another process writes the store.
    """

    def __init__(self, path: str | Path, template: xr.Dataset, batch_size: int, fingerprint: str) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.batch_size = batch_size
        self.n_samples = template.sizes[SAMPLE]
        self.n_batches = -(-self.n_samples // batch_size)
        self.fingerprint = fingerprint
        self._dims = {name: var.dims for name, var in template.data_vars.items() if SAMPLE in var.dims}
        self._sample_arrays = list(self._dims)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(store_lock(self.path))
        try:
            self._done = self._resume_or_create(template)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "BatchedStoreWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's lock (the partial store stays, to be resumed)."""
        self._lock.close()

    def _progress(self) -> Path:
        return self.partial.with_name(self.partial.name + PROGRESS_SUFFIX)

    def _resume_or_create(self, template: xr.Dataset) -> set[int]:
        if self._progress().exists():
            progress = json.loads(self._progress().read_text())
            if progress.get("fingerprint") == self.fingerprint and progress.get("n_batches") == self.n_batches:
                return set(progress["done"])
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self._progress().unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        encoding = schema.encoding(template, chunks={schema.SAMPLE: self.batch_size})
        template.to_zarr(self.partial, mode="w", compute=False, consolidated=False, encoding=encoding,
                         write_empty_chunks=True)
        self._save_progress(set())
        return set()

    def _save_progress(self, done: set[int]) -> None:
        staging = self._progress().with_suffix(".tmp")
        staging.write_text(json.dumps(
            {"fingerprint": self.fingerprint, "n_batches": self.n_batches, "done": sorted(done)}))
        os.replace(staging, self._progress())

    @property
    def pending_batches(self) -> list[int]:
        """Indices of the batches still to write, in order."""
        return [b for b in range(self.n_batches) if b not in self._done]

    def batch_slice(self, batch: int) -> slice:
        """The sample positions batch ``batch`` covers."""
        return slice(batch * self.batch_size, min((batch + 1) * self.batch_size, self.n_samples))

    def write(self, batch: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every per-sample array of ``batch`` (first axis = the batch's samples), then mark it done.

        Raises:
            ValueError: if an array is missing or has the wrong number of samples.
        """
        region = self.batch_slice(batch)
        expected = region.stop - region.start
        if set(arrays) != set(self._sample_arrays):
            raise ValueError(f"batch arrays {sorted(arrays)} differ from the store's {sorted(self._sample_arrays)}")
        for name, value in arrays.items():
            if len(value) != expected:
                raise ValueError(f"array {name!r} has {len(value)} samples for batch {batch}, expected {expected}")
        batch_ds = xr.Dataset({name: (self._dims[name], np.asarray(value)) for name, value in arrays.items()})
        batch_ds.to_zarr(self.partial, region={SAMPLE: region}, consolidated=False, write_empty_chunks=True)
        self._done.add(batch)
        self._save_progress(self._done)

    def finish(self) -> Path:
        """Publish the store once every batch is written; returns the final path.

        Raises:
            RuntimeError: if batches are still missing.
            StoreError: the written store does not validate (:func:`check_complete`); nothing is published.
        """
        if self.pending_batches:
            raise RuntimeError(f"{self.partial}: batches {self.pending_batches} were never written")
        if self.batch_size == schema.SAMPLE_CHUNK:
            _publish(self.partial, self.path)
        else:
            check_complete(self.partial)
            written = xr.open_zarr(self.partial, consolidated=False).chunk({SAMPLE: schema.SAMPLE_CHUNK})
            for variable in written.variables.values():
                variable.encoding = {}  # the batch-sized chunks of the partial store; Dask's chunks rule now
            _write_dataset(written, self.path, self.path.with_name(self.path.name + RECHUNK_SUFFIX),
                           chunks={SAMPLE: schema.SAMPLE_CHUNK})
            shutil.rmtree(self.partial)
            self._progress().unlink()
        self.close()
        return self.path
