"""The masks stage: ground-truth masks in a model-input geometry, written once per (dataset, split, geometry)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from rationality import __version__, schema
from rationality.data.base import create_dataset, split_samples
from rationality.data.geometry import Geometry
from rationality.progress import track
from rationality.store import BatchedStoreWriter

MASK_BATCH = 256


def build_mask_store(dataset: dict[str, Any], split: str, geometry: Geometry, out: str | Path) -> Path:
    """Transform every mask of ``split`` with ``geometry`` and write the mask store ``out``.

    Args:
        dataset: dataset spec ``{name, reader, root, options}``.

    Returns:
        The store path; ``mask`` is bool [sample, crop, crop].
    """
    reader = create_dataset(dataset["reader"], dataset["root"], **dataset.get("options", {}))
    samples = split_samples(reader, split, dataset["name"])
    n, size = len(samples), geometry.crop
    config = {"dataset": dataset, "split": split, "geometry": geometry.to_dict()}
    dataset_provenance = {schema.ATTR_DATASET_ROOT: str(reader.root.resolve()),
                          schema.ATTR_DATASET_FINGERPRINT: reader.fingerprint(split)}
    template = schema.masks_dataset(
        ids=[s.id for s in samples], masks=da.zeros((n, size, size), dtype=bool),
        labels=da.zeros((n,), dtype=np.int32),
        attrs=schema.provenance(schema.StoreKind.MASKS, dataset=dataset["name"], split=split,
                                geometry=geometry.to_dict(), config=config, **dataset_provenance))
    fingerprint = hashlib.sha256(json.dumps({"config": config, "version": __version__, **dataset_provenance},
                                            sort_keys=True).encode()).hexdigest()
    with BatchedStoreWriter(out, template, MASK_BATCH, fingerprint) as writer:
        for batch in track(writer.pending_batches, f"masks {dataset['name']}/{split}/{geometry.name}", "batches"):
            chunk = samples[writer.batch_slice(batch)]
            writer.write(batch, {
                schema.MASK: np.stack([geometry.apply_mask(reader.load_mask(s)) for s in chunk]),
                schema.LABEL: np.array([s.label for s in chunk], dtype=np.int32),
            })
        return writer.finish()
