"""Shared fixtures: the tiny random-init open_clip model and one tiny synthetic dataset per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: The project's tiny open_clip ViT: random init (seeded), 64 px input, 8 x 8 grid, 4 blocks, 4 heads.
TINY_MODEL: dict[str, Any] = {"adapter": "open_clip", "name": "rationality-tiny-vit", "input_size": 64, "patch_size": 8}
#: One tiny random-init configuration per model family (each adapter's ``families``, keyed by adapter for
#: an adapter's first family); the adapter-contract tests run on each. Adding a family means adding its
#: tiny spec here.
TINY_ADAPTER_SPECS: dict[str, dict[str, Any]] = {
    "open_clip": TINY_MODEL,
    "open_clip-siglip": {"adapter": "open_clip", "name": "rationality-tiny-map-vit", "input_size": 64, "patch_size": 8},
    "open_clip-eva": {"adapter": "open_clip", "name": "rationality-tiny-eva-vit", "input_size": 64, "patch_size": 8},
    "transformers-clip": {"adapter": "transformers", "name": "rationality-tiny-hf-clip", "input_size": 64,
                          "patch_size": 8},
    "transformers-siglip": {"adapter": "transformers", "name": "rationality-tiny-hf-siglip", "input_size": 64,
                            "patch_size": 8},
    "blip": {"adapter": "blip", "name": "rationality-tiny-blip", "input_size": 64, "patch_size": 8},
    "albef": {"adapter": "albef", "name": "rationality-tiny-albef", "input_size": 64, "patch_size": 8},
}
#: Images per class of each split of the shared synthetic dataset (4 classes).
SYNTHETIC_COUNTS = {"train": 4, "test": 3}
SYNTHETIC_SIZE = (48, 40)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch on one thread: the tiny model gains nothing from intra-op threads, and when the two
    cores are shared (pytest-xdist, Snakemake jobs, a busy CI box) OpenMP threads thrash (8x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_spec() -> dict[str, Any]:
    """The tiny model's spec (shared: derive variants with ``{**tiny_model_spec, ...}``, never mutate)."""
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_adapter():
    """One tiny adapter for tests that only run it (eval mode; never trained or modified)."""
    from rationality.models import create_adapter

    return create_adapter(dict(TINY_MODEL))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (train 4/class, test 3/class), shared read-only by every test."""
    from rationality.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic-data")
    generate_synthetic_dataset(root, samples_per_class=dict(SYNTHETIC_COUNTS), image_size=SYNTHETIC_SIZE, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_spec(synthetic_root: Path) -> dict[str, Any]:
    """The dataset spec ``{name, reader, root}`` of :func:`synthetic_root`."""
    return {"name": "synth", "reader": "synthetic", "root": str(synthetic_root)}
