"""Stores: crash-safe batched writing, validation, the cache-masks join, and the PT / IR table."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from rationality import schema
from rationality.report.tables import metric_view
from rationality.errors import StoreError
from rationality.report.tables import START_LAYER_POLICIES, TABLE_COLUMNS, rationality_table
from rationality.scoring.metrics import rationality_metrics
from rationality.scoring.rma import MaskProjector, relevance_mass_accuracy
from rationality.scoring.score import ScoringOptions, score_dataset, score_stores
from rationality.store import BatchedStoreWriter, partial_path, write_dataset

N_SAMPLES, BATCH = 7, 3  # three batches, the last one short
MOCK = dict(n_samples=N_SAMPLES, n_classes=3, grid=(4, 4), n_layers=3, explainers=("generic_attention", "other"))


def _template(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every data variable replaced by lazy zeros of the same shape and dtype."""
    template = ds.copy()
    for name, var in ds.data_vars.items():
        template[name] = (var.dims, da.zeros(var.shape, dtype=var.dtype))
    return template


def _write_batch(writer: BatchedStoreWriter, source: xr.Dataset, batch: int) -> None:
    region = writer.batch_slice(batch)
    writer.write(batch, {name: source[name].values[region] for name in source.data_vars})


# --------------------------------------------------------------------------- BatchedStoreWriter


def test_batched_writer_round_trip(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    writer = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a")
    assert writer.pending_batches == [0, 1, 2]
    assert [writer.batch_slice(b) for b in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    for batch in (2, 0, 1):  # any order
        _write_batch(writer, mock, batch)
        assert not path.exists() and partial_path(path).exists()
    assert writer.pending_batches == []
    assert writer.finish() == path
    assert path.exists() and not partial_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.zarr"]  # progress file gone

    stored = xr.open_zarr(path, consolidated=False)
    for name, spec in schema.STORE_ARRAYS[schema.StoreKind.CACHE].items():
        assert stored[name].dims == spec.dims
        assert stored[name].dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(stored[name].values, mock[name].values)
    assert all(isinstance(i, str) for i in stored[schema.SAMPLE].values)
    assert list(stored[schema.SAMPLE].values) == list(mock[schema.SAMPLE].values)
    assert list(stored[schema.EXPLAINER].values) == ["generic_attention", "other"]
    np.testing.assert_array_equal(stored[schema.START_LAYER].values, [0, 1, 2])
    assert stored.attrs == mock.attrs
    xr.testing.assert_identical(stored.load(), mock)
    schema.open_store(str(path), schema.StoreKind.CACHE)  # valid
    # Written one chunk per batch, published in chunks of SAMPLE_CHUNK samples (here: all 7 in one).
    assert {stored[name].encoding["chunks"][0] for name in stored.data_vars} == {schema.SAMPLE_CHUNK}


def test_batched_writer_publishes_large_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "SAMPLE_CHUNK", 4)
    mock = schema.mock_cache(**MOCK)
    writer = BatchedStoreWriter(tmp_path / "cache.zarr", _template(mock), 2, fingerprint="a")
    for batch in writer.pending_batches:
        _write_batch(writer, mock, batch)
    stored = xr.open_zarr(writer.finish())
    assert {stored[name].encoding["chunks"][0] for name in stored.data_vars} == {4}
    xr.testing.assert_identical(stored.load(), mock)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.zarr"]  # partial, progress, staging gone


def test_unfinished_store_cannot_be_opened(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    writer = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a")
    _write_batch(writer, mock, 0)
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.zarr.lock", "cache.zarr.partial",
                                                          "cache.zarr.partial.progress.json"]
    with pytest.raises(StoreError, match="unfinished") as caught:
        schema.open_store(str(path), schema.StoreKind.CACHE)
    assert str(partial_path(path)) in str(caught.value)
    with pytest.raises(RuntimeError, match=r"\[1, 2\]"):
        writer.finish()
    assert not path.exists()


def test_missing_store_without_partial(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store") as caught:
        schema.open_store(str(tmp_path / "absent.zarr"), schema.StoreKind.CACHE)
    assert "unfinished" not in str(caught.value)


def test_resume_with_same_fingerprint(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    first = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="job-1")
    _write_batch(first, mock, 0)
    del first  # the job dies here
    resumed = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="job-1")
    assert resumed.pending_batches == [1, 2]
    for batch in resumed.pending_batches:
        _write_batch(resumed, mock, batch)
    resumed.finish()
    stored = xr.open_zarr(path, consolidated=False)
    np.testing.assert_array_equal(stored[schema.HEATMAP].values, mock[schema.HEATMAP].values)  # batch 0 kept


def test_other_fingerprint_starts_over(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    other = schema.mock_cache(**{**MOCK, "seed": 1})
    path = tmp_path / "cache.zarr"
    first = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="job-1")
    _write_batch(first, mock, 0)
    _write_batch(first, mock, 1)
    del first
    fresh = BatchedStoreWriter(path, _template(other), BATCH, fingerprint="job-2")
    assert fresh.pending_batches == [0, 1, 2]
    with pytest.raises(RuntimeError, match="never written"):
        fresh.finish()
    for batch in fresh.pending_batches:
        _write_batch(fresh, other, batch)
    fresh.finish()
    stored = xr.open_zarr(path, consolidated=False)
    np.testing.assert_array_equal(stored[schema.HEATMAP].values, other[schema.HEATMAP].values)
    assert not np.array_equal(stored[schema.HEATMAP].values, mock[schema.HEATMAP].values)


def test_finish_replaces_a_finished_store(tmp_path: Path) -> None:
    path = write_dataset(schema.mock_cache(**MOCK), tmp_path / "cache.zarr")
    other = schema.mock_cache(**{**MOCK, "seed": 2})
    writer = BatchedStoreWriter(path, _template(other), BATCH, fingerprint="a")
    for batch in writer.pending_batches:
        _write_batch(writer, other, batch)
    np.testing.assert_array_equal(  # the finished store stays readable until the new one is complete
        xr.open_zarr(path, consolidated=False)[schema.LOGITS].values, schema.mock_cache(**MOCK)[schema.LOGITS].values)
    writer.finish()
    np.testing.assert_array_equal(xr.open_zarr(path, consolidated=False)[schema.LOGITS].values,
                                  other[schema.LOGITS].values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.zarr"]


def test_other_batch_size_starts_over(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    _write_batch(BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="job"), mock, 0)
    assert BatchedStoreWriter(path, _template(mock), 2, fingerprint="job").pending_batches == [0, 1, 2, 3]


def test_a_second_writer_fails_at_once(tmp_path: Path) -> None:
    """Two writers of one store used to both run: the store was published without attributes, with NaN logits."""
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    first = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a")
    with pytest.raises(StoreError, match=rf"another process \(pid {os.getpid()}\) is writing this store"):
        BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a")
    with pytest.raises(StoreError, match="another process"):
        write_dataset(mock, path)
    for batch in first.pending_batches:  # the first writer is unharmed
        _write_batch(first, mock, batch)
    xr.testing.assert_identical(xr.open_zarr(first.finish(), consolidated=False).load(), mock)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.zarr"]  # the lock file is gone too
    BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a").close()  # free again


def test_a_killed_writer_releases_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "cache.zarr"
    code = ("import sys, time; from pathlib import Path; from rationality.store import store_lock\n"
            "with store_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=rf"pid {holder.pid}\)"):
            write_dataset(schema.mock_cache(**MOCK), path)
    finally:
        holder.kill()
        holder.wait()
    write_dataset(schema.mock_cache(**MOCK), path)  # the kernel released the lock of the killed process


def test_an_incomplete_store_is_not_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk that was never written (here: a write skipped) stops the store at its partial path."""
    mock = schema.mock_cache(**MOCK)
    path = tmp_path / "cache.zarr"
    writer = BatchedStoreWriter(path, _template(mock), BATCH, fingerprint="a")
    for batch in writer.pending_batches:
        _write_batch(writer, mock, batch)
    shutil.rmtree(partial_path(path) / schema.HEATMAP / "c" / "1")  # batch 1's heatmap chunk
    with pytest.raises(StoreError, match=r"chunks were never written: heatmap \(1 of its chunks\)"):
        writer.finish()
    assert not path.exists() and partial_path(path).exists()


def test_a_store_without_its_attributes_is_not_published(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    del mock.attrs[schema.ATTR_CHECKPOINT_SHA256]
    with pytest.raises(StoreError, match="attribute 'checkpoint_sha256' is missing"):
        write_dataset(mock, tmp_path / "cache.zarr")
    assert not (tmp_path / "cache.zarr").exists()


@pytest.mark.parametrize(("version", "age"), [(schema.SCHEMA_VERSION + 1, "a newer"), (1, "an older")])
def test_another_schema_version_is_refused(tmp_path: Path, version: int, age: str) -> None:
    path = write_dataset(schema.mock_cache(**MOCK), tmp_path / "cache.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs[schema.ATTR_SCHEMA_VERSION] = version
    zarr.consolidate_metadata(str(path))
    with pytest.raises(StoreError, match=rf"schema version {version}, this rationality reads version "
                                         rf"{schema.SCHEMA_VERSION}: written by {age} rationality"):
        schema.open_store(str(path), schema.StoreKind.CACHE)


def test_write_checks_the_batch(tmp_path: Path) -> None:
    mock = schema.mock_cache(**MOCK)
    writer = BatchedStoreWriter(tmp_path / "cache.zarr", _template(mock), BATCH, fingerprint="a")
    arrays = {name: mock[name].values[:3] for name in mock.data_vars}
    with pytest.raises(ValueError, match="differ"):
        writer.write(0, {k: v for k, v in arrays.items() if k != schema.HEATMAP})
    with pytest.raises(ValueError, match="expected 1"):
        writer.write(2, arrays)  # batch 2 holds one sample
    assert writer.pending_batches == [0, 1, 2]


def test_write_dataset_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "masks.zarr"
    write_dataset(schema.mock_masks(seed=0), path)
    write_dataset(schema.mock_masks(seed=1), path)
    stored = schema.open_store(str(path), schema.StoreKind.MASKS)
    np.testing.assert_array_equal(stored[schema.MASK].values, schema.mock_masks(seed=1)[schema.MASK].values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.zarr"]


# --------------------------------------------------------------------------- validation


def test_mocks_are_valid() -> None:
    schema.validate(schema.mock_cache(), schema.StoreKind.CACHE)
    schema.validate(schema.mock_masks(), schema.StoreKind.MASKS)


def _validation_error(ds: xr.Dataset, kind: schema.StoreKind) -> str:
    with pytest.raises(StoreError) as caught:
        schema.validate(ds, kind, source="/data/some-store.zarr")
    message = str(caught.value)
    assert message.startswith("/data/some-store.zarr ")
    return message


def test_validate_wrong_kind() -> None:
    message = _validation_error(schema.mock_cache(), schema.StoreKind.MASKS)
    assert "'cache', expected 'masks'" in message
    assert "array 'mask' is missing" in message


def test_validate_missing_array_and_attribute() -> None:
    ds = schema.mock_cache().drop_vars(schema.HEATMAP)
    del ds.attrs[schema.ATTR_CHECKPOINT_SHA256]
    message = _validation_error(ds, schema.StoreKind.CACHE)
    assert "array 'heatmap' is missing" in message
    assert "attribute 'checkpoint_sha256' is missing" in message


def test_validate_wrong_dims() -> None:
    ds = schema.mock_cache()
    ds[schema.HEATMAP] = ds[schema.HEATMAP].transpose("sample", "start_layer", "explainer", "gy", "gx")
    assert "array 'heatmap' has dims" in _validation_error(ds, schema.StoreKind.CACHE)


def test_validate_wrong_dtype() -> None:
    ds = schema.mock_masks()
    ds[schema.MASK] = ds[schema.MASK].astype(np.uint8)
    assert "dtype uint8, expected bool" in _validation_error(ds, schema.StoreKind.MASKS)


def test_validate_duplicate_ids() -> None:
    ds = schema.mock_cache(n_samples=3)
    ds = ds.assign_coords({schema.SAMPLE: schema.sample_ids(["a", "b", "a"])})
    assert "duplicate sample ids" in _validation_error(ds, schema.StoreKind.CACHE)


def test_open_store_of_wrong_kind(tmp_path: Path) -> None:
    path = write_dataset(schema.mock_masks(), tmp_path / "masks.zarr")
    with pytest.raises(StoreError, match=re.escape(str(path))):
        schema.open_store(str(path), schema.StoreKind.CACHE)


# --------------------------------------------------------------------------- the scoring join

CACHE_PATH, MASKS_PATH = "/stores/cache-A.zarr", "/stores/masks-B.zarr"


@pytest.fixture
def cache() -> xr.Dataset:
    return schema.mock_cache(n_samples=8, n_classes=3, grid=(4, 4), n_layers=2)


@pytest.fixture
def masks() -> xr.Dataset:
    return schema.mock_masks(n_samples=8, n_classes=3, size=(16, 16))


def _scores(cache: xr.Dataset, masks: xr.Dataset, normalization: str = "minmax") -> xr.Dataset:
    return score_dataset(cache, masks, ScoringOptions(normalization), CACHE_PATH, MASKS_PATH).compute()


def _direct(cache: xr.Dataset, masks: xr.Dataset, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """RMA by calling the kernel on the whole arrays, masks already in the cache's order."""
    mask_values = masks[schema.MASK].values
    projector = MaskProjector(frame=mask_values.shape[1:], grid=cache[schema.HEATMAP].shape[3:])
    return relevance_mass_accuracy(cache[schema.HEATMAP].values, projector.project(mask_values),
                                   mask_values.sum(axis=(1, 2)), projector, normalization)


@pytest.mark.parametrize("normalization", ["minmax", "none"])
def test_join_is_by_id_not_position(cache: xr.Dataset, masks: xr.Dataset, normalization: str) -> None:
    in_order = _scores(cache, masks, normalization)
    reversed_masks = masks.isel({schema.SAMPLE: slice(None, None, -1)})
    assert list(reversed_masks[schema.SAMPLE].values) != list(masks[schema.SAMPLE].values)
    xr.testing.assert_identical(_scores(cache, reversed_masks, normalization).drop_attrs(), in_order.drop_attrs())
    rma, edge = _direct(cache, masks, normalization)
    np.testing.assert_array_equal(metric_view(in_order)[schema.SCORE].values, rma)
    np.testing.assert_array_equal(metric_view(in_order)[schema.EDGE_CASE].values, edge)
    # A positional join would have given other values.
    mismatched, _ = _direct(cache, reversed_masks, normalization)
    assert not np.allclose(mismatched, rma)


def test_scores_fields(cache: xr.Dataset, masks: xr.Dataset) -> None:
    scores = _scores(cache, masks)
    schema.validate(scores, schema.StoreKind.SCORES)
    prediction = cache[schema.LOGITS].values.argmax(axis=1)
    np.testing.assert_array_equal(scores[schema.PREDICTION].values, prediction)
    np.testing.assert_array_equal(scores[schema.CORRECT].values, prediction == cache[schema.LABEL].values)
    np.testing.assert_array_equal(scores[schema.LABEL].values, cache[schema.LABEL].values)
    assert scores.attrs[schema.ATTR_CACHE_PATH] == CACHE_PATH
    assert scores.attrs[schema.ATTR_MASKS_PATH] == MASKS_PATH
    assert schema.json_attr(scores, schema.ATTR_SCORING) == {"normalization": "minmax", "metrics": ["rma"]}
    assert scores.attrs[schema.ATTR_PAPER_START_LAYER] == cache.attrs[schema.ATTR_PAPER_START_LAYER]


def test_join_different_ids(cache: xr.Dataset, masks: xr.Dataset) -> None:
    ids = list(masks[schema.SAMPLE].values)
    ids[5] = "stranger-0005"
    other = masks.assign_coords({schema.SAMPLE: schema.sample_ids(ids)})
    with pytest.raises(StoreError) as caught:
        _scores(cache, other)
    message = str(caught.value)
    assert CACHE_PATH in message and MASKS_PATH in message
    assert "mock-0005" in message and "stranger-0005" in message


def test_join_fewer_masks(cache: xr.Dataset, masks: xr.Dataset) -> None:
    with pytest.raises(StoreError, match="mock-0007"):
        _scores(cache, masks.isel({schema.SAMPLE: slice(0, 7)}))


def test_join_different_labels(cache: xr.Dataset, masks: xr.Dataset) -> None:
    labels = masks[schema.LABEL].values.copy()
    labels[3] = (labels[3] + 1) % 3
    other = masks.assign({schema.LABEL: (masks[schema.LABEL].dims, labels)})
    with pytest.raises(StoreError, match="labels") as caught:
        _scores(cache, other)
    assert CACHE_PATH in str(caught.value) and "mock-0003" in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [
    (schema.ATTR_GEOMETRY, json.dumps({"crop": 16, "resize": 20})),
    (schema.ATTR_SPLIT, "train"),
    (schema.ATTR_DATASET, "other"),
])
def test_join_different_attributes(cache: xr.Dataset, masks: xr.Dataset, key: str, value: str) -> None:
    masks.attrs[key] = value
    with pytest.raises(StoreError, match=key) as caught:
        _scores(cache, masks)
    assert CACHE_PATH in str(caught.value) and MASKS_PATH in str(caught.value)


@pytest.mark.parametrize("normalization", ["minmax", "none"])
def test_score_stores_end_to_end(tmp_path: Path, normalization: str) -> None:
    cache = schema.mock_cache(n_samples=70, grid=(4, 4), n_layers=3, explainers=("generic_attention", "other"))
    masks = schema.mock_masks(n_samples=70, size=(16, 16), seed=3)
    masks[schema.MASK].values[4] = False  # one empty mask
    cache_path = write_dataset(cache, tmp_path / "cache.zarr")
    # The mask store holds the samples in another order.
    masks_path = write_dataset(masks.isel({schema.SAMPLE: np.random.default_rng(0).permutation(70)}),
                               tmp_path / "masks.zarr")
    out = score_stores(cache_path, masks_path, tmp_path / "scores.zarr", ScoringOptions(normalization), progress=False)
    scores = schema.open_store(str(out), schema.StoreKind.SCORES)
    rma, edge = _direct(cache, masks, normalization)
    np.testing.assert_array_equal(metric_view(scores)[schema.SCORE].values, rma)
    np.testing.assert_array_equal(metric_view(scores)[schema.EDGE_CASE].values, edge)
    assert (edge[4] == schema.EdgeCase.EMPTY_MASK).all() and (edge[np.arange(70) != 4] == 0).all()
    assert list(scores[schema.SAMPLE].values) == list(cache[schema.SAMPLE].values)
    assert scores.attrs[schema.ATTR_CACHE_PATH] == str(cache_path)
    assert scores.attrs[schema.ATTR_MASKS_PATH] == str(masks_path)


# --------------------------------------------------------------------------- tables


def _score_store(tmp_path: Path, name: str, normalization: str = "minmax", **cache_attrs) -> Path:
    cache = schema.mock_cache(n_samples=24, grid=(4, 4), n_layers=3, explainers=("generic_attention", "other"),
                              seed=len(name), **cache_attrs)
    masks = schema.mock_masks(n_samples=24, size=(16, 16), seed=len(name))
    scores = score_dataset(cache, masks, ScoringOptions(normalization))
    return write_dataset(scores, tmp_path / f"{name}.zarr")


def test_table_rows_and_policies(tmp_path: Path) -> None:
    first = _score_store(tmp_path, "first", method="zs")  # paper_start_layer defaults to the last (2)
    second = _score_store(tmp_path, "second-store", method="lp", method_kind="linear_probe", paper_start_layer=0)
    table = rationality_table([first, second])
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 2 * 2 * len(START_LAYER_POLICIES)
    paper = table[table.start_layer_policy == "paper"].set_index(["method", "explainer"]).start_layer
    assert paper[("zs", "generic_attention")] == 2 and paper[("lp", "other")] == 0
    assert set(table[table.start_layer_policy == "all_blocks"].start_layer) == {0}
    assert set(table[table.start_layer_policy == "last_block"].start_layer) == {2}
    assert set(table.normalization) == {"minmax"} and set(table.undefined_policy) == {"invalid"}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_table_metrics_follow_threshold(tmp_path: Path, threshold: float) -> None:
    path = _score_store(tmp_path, "store")
    scores = schema.open_store(str(path), schema.StoreKind.SCORES)
    table = rationality_table([path], threshold=threshold, policies=["all_blocks", "last_block"])
    for row in table.itertuples():
        e = ["generic_attention", "other"].index(row.explainer)
        expected = rationality_metrics(metric_view(scores)[schema.SCORE].values[:, e, row.start_layer],
                                       metric_view(scores)[schema.EDGE_CASE].values[:, e, row.start_layer],
                                       scores[schema.CORRECT].values, threshold=threshold)
        assert row.threshold == threshold
        assert (row.rr, row.rw, row.wr, row.ww) == (expected.rr, expected.rw, expected.wr, expected.ww)
        np.testing.assert_equal([row.pt, row.ir, row.accuracy], [expected.pt, expected.ir, expected.accuracy])


def test_table_threshold_changes_pt(tmp_path: Path) -> None:
    path = _score_store(tmp_path, "store")
    low = rationality_table([path], threshold=0.2, policies=["all_blocks"])
    high = rationality_table([path], threshold=0.8, policies=["all_blocks"])
    assert (low.pt.values > high.pt.values).all()
    np.testing.assert_array_equal(low.accuracy.values, high.accuracy.values)


def test_table_undefined_policy(tmp_path: Path) -> None:
    path = _score_store(tmp_path, "store")
    table = rationality_table([path], undefined="exclude")
    assert set(table.undefined_policy) == {"exclude"}
    assert (table.n == 24).all()


def test_table_refuses_mixed_scoring_options(tmp_path: Path) -> None:
    minmax = _score_store(tmp_path, "a", "minmax")
    none = _score_store(tmp_path, "bb", "none")
    with pytest.raises(StoreError, match="different scoring options") as caught:
        rationality_table([minmax, none])
    assert str(minmax) in str(caught.value) and str(none) in str(caught.value)


def test_table_of_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=re.escape(str(tmp_path / "absent.zarr"))):
        rationality_table([tmp_path / "absent.zarr"])


def test_scoring_on_a_distributed_cluster_matches_local(tmp_path: Path) -> None:
    """The scorer attaches to a running Dask scheduler by address (here a local cluster of processes)."""
    from distributed import LocalCluster

    from rationality.scoring.score import ScoringOptions, score_stores
    from rationality.store import write_dataset

    cache, masks = write_dataset(schema.mock_cache(n_samples=40), tmp_path / "cache.zarr"), write_dataset(
        schema.mock_masks(n_samples=40), tmp_path / "masks.zarr")
    local = score_stores(cache, masks, tmp_path / "local.zarr", ScoringOptions(), progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = score_stores(cache, masks, tmp_path / "remote.zarr", ScoringOptions(),
                              dask_address=cluster.scheduler_address)
    local_scores = schema.open_store(str(local), schema.StoreKind.SCORES).load()
    remote_scores = schema.open_store(str(remote), schema.StoreKind.SCORES).load()
    xr.testing.assert_identical(local_scores.drop_attrs(), remote_scores.drop_attrs())


def test_scoring_from_projections_equals_scoring_from_masks(tmp_path: Path) -> None:
    """Projecting the masks once per grid changes nothing but speed; a projection for another grid is refused."""
    from rationality.scoring.project import project_mask_store
    from rationality.scoring.score import ScoringOptions, score_stores
    from rationality.store import write_dataset

    cache = write_dataset(schema.mock_cache(n_samples=30, grid=(4, 4)), tmp_path / "cache.zarr")
    masks = write_dataset(schema.mock_masks(n_samples=30, size=(16, 16)), tmp_path / "masks.zarr")
    projections = project_mask_store(masks, (4, 4), tmp_path / "projections.zarr", progress=False)
    stored = schema.open_store(str(projections), schema.StoreKind.PROJECTIONS)
    assert stored[schema.MASK_AREA].values.tolist() == [64] * 30  # mock masks: one 8 x 8 rectangle each
    for normalization in ("minmax", "none"):
        options = ScoringOptions(normalization=normalization)
        direct = score_stores(cache, masks, tmp_path / f"direct-{normalization}.zarr", options, progress=False)
        projected = score_stores(cache, projections, tmp_path / f"projected-{normalization}.zarr", options,
                                 progress=False)
        direct_rma = schema.open_store(str(direct), schema.StoreKind.SCORES)[schema.SCORE].values
        projected_rma = schema.open_store(str(projected), schema.StoreKind.SCORES)[schema.SCORE].values
        np.testing.assert_allclose(projected_rma, direct_rma, atol=1e-6)
    other_grid = project_mask_store(masks, (2, 2), tmp_path / "projections-2x2.zarr", progress=False)
    with pytest.raises(StoreError, match=r"projected onto grid \[2, 2\].*\[4, 4\] heatmaps"):
        score_stores(cache, other_grid, tmp_path / "refused.zarr", ScoringOptions(), progress=False)
