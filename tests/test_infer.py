"""The GPU stage's machinery: frozen weights, the out-of-memory back-off, chunks apart from batches, the
writer thread, and the dataset provenance that resuming and scoring check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rationality.infer as infer
from conftest import SYNTHETIC_COUNTS, SYNTHETIC_SIZE
from rationality import schema
from rationality.data.geometry import Geometry
from rationality.data.masks import build_mask_store
from rationality.data.synthetic import generate_synthetic_dataset
from rationality.errors import StoreError
from rationality.explain import create_explainer, explain_batch
from rationality.infer import run_inference
from rationality.models import ImageClassifier, PromptHead
from rationality.scoring.score import ScoringOptions, score_stores
from rationality.store import BatchedStoreWriter, partial_path
from rationality.train import train_checkpoint

EXPLAINERS = ["generic_attention", "attention_gradient"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_spec: dict, tiny_model_spec: dict) -> Path:
    return train_checkpoint(dict(tiny_model_spec), synthetic_spec, {"kind": "zero_shot"}, "train",
                            tmp_path_factory.mktemp("zs"))


def _infer(checkpoint: Path, synthetic_spec: dict, out: Path, **options) -> Path:
    return run_inference(checkpoint, synthetic_spec, "test", out, explainers=EXPLAINERS, device="cpu",
                         model_name="tiny", method_name="zs", **options)


def _store_bytes(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}


def test_frozen_weights_give_the_same_heatmaps(tiny_adapter) -> None:
    """Freezing the weights changes what autograd keeps, not what it computes."""
    head = PromptHead.from_prompts(tiny_adapter, ["a photo of a disk.", "a photo of a square."])
    classifier = ImageClassifier(tiny_adapter, head).eval()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1])
    explainers = [create_explainer(name) for name in EXPLAINERS]
    assert all(p.requires_grad for p in tiny_adapter.parameters())
    trainable = explain_batch(classifier, pixels, labels, explainers)
    try:
        classifier.requires_grad_(False)
        frozen = explain_batch(classifier, pixels, labels, explainers)
    finally:
        classifier.requires_grad_(True)  # the session's shared adapter
    assert torch.equal(trainable[0], frozen[0]) and torch.equal(trainable[1], frozen[1])


def test_out_of_memory_halves_the_batch_and_gives_the_same_store(checkpoint: Path, synthetic_spec: dict,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    reference = _infer(checkpoint, synthetic_spec, tmp_path / "batches-of-2.zarr", batch_size=2, chunk_size=5)
    real = infer.explain_batch
    sizes: list[int] = []

    def out_of_memory_above_two(classifier, pixels, *args):
        sizes.append(len(pixels))
        if len(pixels) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(classifier, pixels, *args)

    monkeypatch.setattr(infer, "explain_batch", out_of_memory_above_two)
    backed_off = _infer(checkpoint, synthetic_spec, tmp_path / "backed-off.zarr", batch_size=8, chunk_size=5)
    # The first chunk's 5 images fail once, then every batch has at most 2 images (12 test images).
    assert sizes == [5, 2, 2, 1, 2, 2, 1, 2]
    assert "CUDA out of memory at a batch of 5 images: continuing with batches of 2" in capsys.readouterr().err
    assert _store_bytes(backed_off) == _store_bytes(reference)


def test_out_of_memory_at_one_image_is_raised(checkpoint: Path, synthetic_spec: dict, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def always_out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(infer, "explain_batch", always_out_of_memory)
    out = tmp_path / "cache.zarr"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _infer(checkpoint, synthetic_spec, out, batch_size=4)
    assert not out.exists()


def test_chunks_do_not_depend_on_the_batch_size(checkpoint: Path, synthetic_spec: dict, tmp_path: Path) -> None:
    """Batches never span chunks, so the stored chunks, and a resume, are the same for any batch size."""
    one = _infer(checkpoint, synthetic_spec, tmp_path / "b1.zarr", batch_size=1, chunk_size=4)
    three = schema.open_store(str(_infer(checkpoint, synthetic_spec, tmp_path / "b3.zarr", batch_size=3,
                                         chunk_size=4)), schema.StoreKind.CACHE)
    one = schema.open_store(str(one), schema.StoreKind.CACHE)
    assert three[schema.HEATMAP].encoding["chunks"][0] == schema.SAMPLE_CHUNK  # re-chunked when published
    np.testing.assert_allclose(three[schema.HEATMAP].values, one[schema.HEATMAP].values, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(three[schema.LABEL].values, one[schema.LABEL].values)


def test_a_failing_write_stops_the_stage_and_keeps_the_written_chunks(checkpoint: Path, synthetic_spec: dict,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = BatchedStoreWriter.write
    written: list[int] = []

    def disk_full_at_the_third_chunk(self, chunk, arrays):
        if chunk == 2:
            raise OSError("No space left on device (simulated)")
        real(self, chunk, arrays)
        written.append(chunk)

    monkeypatch.setattr(BatchedStoreWriter, "write", disk_full_at_the_third_chunk)
    out = tmp_path / "cache.zarr"
    with pytest.raises(OSError, match="No space left"):
        _infer(checkpoint, synthetic_spec, out, batch_size=2, chunk_size=2)
    assert not out.exists() and partial_path(out).exists()
    assert written == [0, 1]  # in order; nothing after the failure
    monkeypatch.undo()
    resumed = _infer(checkpoint, synthetic_spec, out, batch_size=2, chunk_size=2)
    reference = _infer(checkpoint, synthetic_spec, tmp_path / "reference.zarr", batch_size=2, chunk_size=2)
    assert _store_bytes(resumed) == _store_bytes(reference)


# --------------------------------------------------------------------------- provenance (issue: shifted stores)


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> dict:
    """A private copy of the synthetic dataset that a test may edit, as a dataset spec."""
    root = Path(shutil.copytree(synthetic_root, tmp_path / "data"))
    return {"name": "synth", "reader": "synthetic", "root": str(root)}


def test_resume_after_the_dataset_changed_starts_over(checkpoint: Path, dataset_copy: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing a sample before a resume used to publish a store shifted by one sample, its last one NaN."""
    real, calls = infer.explain_batch, []

    def dies_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "cache.zarr"
    monkeypatch.setattr(infer, "explain_batch", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _infer(checkpoint, dataset_copy, out, batch_size=4, chunk_size=4)
    monkeypatch.undo()
    index = Path(dataset_copy["root"]) / "samples.csv"
    rows = index.read_text().splitlines()
    removed = next(row for row in rows if row.endswith(",test")).split(",")[0]
    index.write_text("\n".join(row for row in rows if not row.startswith(removed + ",")) + "\n")

    resumed = schema.open_store(str(_infer(checkpoint, dataset_copy, out, batch_size=4, chunk_size=4)),
                                schema.StoreKind.CACHE)
    fresh = schema.open_store(str(_infer(checkpoint, dataset_copy, tmp_path / "fresh.zarr", batch_size=4,
                                         chunk_size=4)), schema.StoreKind.CACHE)
    assert removed not in resumed.indexes[schema.SAMPLE] and resumed.sizes[schema.SAMPLE] == 11
    assert np.isfinite(resumed[schema.LOGITS].values).all()
    for name in (schema.LOGITS, schema.LABEL, schema.HEATMAP):
        np.testing.assert_array_equal(resumed[name].values, fresh[name].values)
    np.testing.assert_array_equal(resumed[schema.SAMPLE].values, fresh[schema.SAMPLE].values)


def test_masks_of_a_regenerated_dataset_are_refused(checkpoint: Path, dataset_copy: dict, tmp_path: Path) -> None:
    """Same name, same ids and labels, other images: scoring used to join them silently."""
    masks = build_mask_store(dataset_copy, "test", Geometry(64, 64), tmp_path / "masks.zarr")
    generate_synthetic_dataset(Path(dataset_copy["root"]), samples_per_class=dict(SYNTHETIC_COUNTS),
                               image_size=SYNTHETIC_SIZE, seed=1)
    cache = _infer(checkpoint, dataset_copy, tmp_path / "cache.zarr", batch_size=4)
    with pytest.raises(StoreError, match=r"disagree on dataset_fingerprint: .*\(the dataset's files changed"):
        score_stores(cache, masks, tmp_path / "scores.zarr", ScoringOptions(), progress=False)
    assert not (tmp_path / "scores.zarr").exists()
    score_stores(cache, build_mask_store(dataset_copy, "test", Geometry(64, 64), tmp_path / "masks-again.zarr"),
                 tmp_path / "scores.zarr", ScoringOptions(), progress=False)
