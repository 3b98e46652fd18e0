"""The one place that names the dimensions, arrays and attributes of every Zarr store.

Four kinds of store, each opened by ``xarray.open_zarr`` with named dimensions and string
sample ids as the ``sample`` coordinate:

* **cache** (GPU stage, ``results/cache/{model}/{dataset}/{method}.zarr``)
    - ``logits``  (sample, class)                              float32
    - ``label``   (sample,)                                    int32, ground-truth class index
    - ``heatmap`` (sample, explainer, start_layer, gy, gx)     float32, token-grid resolution,
      for the ground-truth class; ``start_layer`` s means blocks s..L-1 took part.
* **masks** (``results/masks/{dataset}/{split}-{geometry}.zarr``)
    - ``mask``    (sample, y, x)                               bool, model-input frame
    - ``label``   (sample,)                                    int32
* **projections** (``results/masks/{dataset}/{split}-{geometry}-grid{gy}x{gx}.zarr``): the masks
  projected onto a token grid for exact RMA on the grid (see :mod:`rationality.scoring.rma`)
    - ``mask_projection`` (sample, gy, gx)                   float32, U_yᵀ M U_x
    - ``mask_area``       (sample,)                          int32, object pixels
    - ``box_projection``  (sample, gy, gx)                   float32, U_yᵀ B U_x, B the mask's bounding box
    - ``box_area``        (sample,)                          int32, pixels of the box
    - ``label``           (sample,)                          int32
* **scores** (CPU stage, ``results/scores/{model}/{dataset}/{method}.zarr``)
    - ``score``     (sample, normalization, metric, explainer, start_layer)   float32, a localisation
      metric's value (``rma``, ``pointing_game``, ...; see :mod:`rationality.scoring.localisation`),
      NaN where undefined; ``normalization`` holds both heatmap normalisations, ``minmax`` and ``none``
    - ``edge_case`` (sample, normalization, metric, explainer, start_layer)   int8, an :class:`EdgeCase`
    - ``label``, ``prediction`` (sample,)                      int32
    - ``correct``   (sample,)                                  bool

Nothing outside this module spells these names. :func:`validate` checks an opened store
against its spec; the ``mock_*`` builders make small valid datasets for tests.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec, BloscShuffle

from rationality.errors import StoreError

#: The version of the layout this module describes; stores of another version are refused when opened.
#: 2: dataset_root and dataset_fingerprint in every store but the scores' own scoring options.
#: 3: the scores store's ``rma`` became ``score`` with ``normalization`` and ``metric`` dimensions (every
#: registered localisation metric, both normalisations, so that conclusions can be checked across them
#: without re-scoring); projections gained the masks' bounding boxes (energy pointing game); cache and
#: scores stores record the training ``seed``; edge case ``FULL_MASK``.
SCHEMA_VERSION = 3

# Dimensions.
SAMPLE = "sample"
CLASS = "class"
EXPLAINER = "explainer"
START_LAYER = "start_layer"
METRIC = "metric"
NORMALIZATION = "normalization"
GRID_Y = "gy"
GRID_X = "gx"
PIXEL_Y = "y"
PIXEL_X = "x"

# Arrays.
LOGITS = "logits"
LABEL = "label"
HEATMAP = "heatmap"
MASK = "mask"
MASK_PROJECTION = "mask_projection"
MASK_AREA = "mask_area"
BOX_PROJECTION = "box_projection"
BOX_AREA = "box_area"
SCORE = "score"
EDGE_CASE = "edge_case"
PREDICTION = "prediction"
CORRECT = "correct"

# Compression of every array: Blosc's zstd (level 5) with bit-shuffling. Measured against zarr's
# default (plain zstd) and Blosc lz4 + bit-shuffle on 20,000 samples at ViT-B/16 geometry (2 cores):
# masks 19 B/sample (zstd 63, lz4 228), read 1.6 s (zstd 1.3 s, lz4 1.7 s); random heatmaps
# 7,685 B/sample (zstd 8,418), read 0.24 s (zstd 0.32 s). Smallest stores at similar speed.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle),)

# Samples per Zarr chunk of a finished store. Writers work in smaller batches (one chunk per batch,
# so a crash never leaves a half-written chunk) and re-chunk to this size when they publish;
# the scorer reads and computes in tasks of this many samples. Measured with benchmarks/score.py
# (20,000 samples, ViT-B/16 geometry, 2 cores), scoring from masks / projecting / scoring from
# projections took 8.6 / 3.4 / 2.1 s with chunks of 256 samples, 5.8 / 4.5 / 1.9 s with 1,024, and
# 6.6 / 7.1 / 1.7 s with 4,096; chunks of 32 (the GPU stage's batches) were several times slower.
SAMPLE_CHUNK = 1024

# Attributes (values are JSON-serialisable; nested ones are stored as JSON text).
ATTR_KIND = "rationality_store"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_PACKAGE_VERSION = "package_version"
ATTR_MODEL = "model"
ATTR_DATASET = "dataset"
ATTR_SPLIT = "split"
ATTR_METHOD = "method"
ATTR_METHOD_KIND = "method_kind"
ATTR_PAPER_START_LAYER = "paper_start_layer"
ATTR_GEOMETRY = "geometry"
ATTR_NORMALIZATION = "image_normalization"
ATTR_CHECKPOINT_SHA256 = "checkpoint_sha256"
ATTR_CONFIG = "config"
ATTR_SCORING = "scoring"
ATTR_CACHE_PATH = "cache_path"
ATTR_MASKS_PATH = "masks_path"
ATTR_GRID = "grid"
#: The image corruption of an out-of-distribution store (``none`` for clean data) and its severity
#: (1-5; 0 for clean data), so that severity curves are read from the stores, not from paths.
ATTR_CORRUPTION = "corruption"
ATTR_SEVERITY = "severity"
CLEAN = "none"
#: The seed the run was trained with (``null`` for a method whose result does not depend on it, such as
#: zero-shot): stores of the same (model, dataset, method) and different seeds are repeated runs.
ATTR_SEED = "seed"
#: Where the samples were read (the reader's root, absolute) and the SHA-256 of their listing
#: (:meth:`rationality.data.base.DatasetReader.fingerprint`): a cache is scored only against masks of
#: the same root and fingerprint, and a partial store is resumed only for the same fingerprint.
ATTR_DATASET_ROOT = "dataset_root"
ATTR_DATASET_FINGERPRINT = "dataset_fingerprint"
DATASET_PROVENANCE = (ATTR_DATASET_ROOT, ATTR_DATASET_FINGERPRINT)


class StoreKind(str, enum.Enum):
    """Which of the four stores a Zarr group is."""

    CACHE = "cache"
    MASKS = "masks"
    PROJECTIONS = "projections"
    SCORES = "scores"


class EdgeCase(enum.IntEnum):
    """Why a sample's RMA is undefined (stored in ``edge_case``; RMA is NaN unless ``OK``)."""

    OK = 0
    EMPTY_MASK = 1  # the ground-truth mask has no pixel: nothing to be right about
    ZERO_SUM_HEATMAP = 2  # sum(H) == 0, or a constant heatmap under min-max normalisation
    NON_FINITE_HEATMAP = 3  # the heatmap holds NaN or inf
    FULL_MASK = 4  # the mask covers the whole frame: no background to rank the object against (AUC)


@dataclass(frozen=True)
class ArraySpec:
    """An array of a store: its dimensions and numpy dtype kind ('f', 'i', 'b', 'U'/'O')."""

    dims: tuple[str, ...]
    dtype: str


STORE_ARRAYS: dict[StoreKind, dict[str, ArraySpec]] = {
    StoreKind.CACHE: {
        LOGITS: ArraySpec((SAMPLE, CLASS), "float32"),
        LABEL: ArraySpec((SAMPLE,), "int32"),
        HEATMAP: ArraySpec((SAMPLE, EXPLAINER, START_LAYER, GRID_Y, GRID_X), "float32"),
    },
    StoreKind.MASKS: {
        MASK: ArraySpec((SAMPLE, PIXEL_Y, PIXEL_X), "bool"),
        LABEL: ArraySpec((SAMPLE,), "int32"),
    },
    StoreKind.PROJECTIONS: {
        MASK_PROJECTION: ArraySpec((SAMPLE, GRID_Y, GRID_X), "float32"),
        MASK_AREA: ArraySpec((SAMPLE,), "int32"),
        BOX_PROJECTION: ArraySpec((SAMPLE, GRID_Y, GRID_X), "float32"),
        BOX_AREA: ArraySpec((SAMPLE,), "int32"),
        LABEL: ArraySpec((SAMPLE,), "int32"),
    },
    StoreKind.SCORES: {
        SCORE: ArraySpec((SAMPLE, NORMALIZATION, METRIC, EXPLAINER, START_LAYER), "float32"),
        EDGE_CASE: ArraySpec((SAMPLE, NORMALIZATION, METRIC, EXPLAINER, START_LAYER), "int8"),
        LABEL: ArraySpec((SAMPLE,), "int32"),
        PREDICTION: ArraySpec((SAMPLE,), "int32"),
        CORRECT: ArraySpec((SAMPLE,), "bool"),
    },
}

STORE_ATTRS: dict[StoreKind, tuple[str, ...]] = {
    StoreKind.CACHE: (
        ATTR_MODEL, ATTR_DATASET, ATTR_SPLIT, ATTR_METHOD, ATTR_METHOD_KIND, ATTR_PAPER_START_LAYER,
        ATTR_GEOMETRY, ATTR_NORMALIZATION, ATTR_CHECKPOINT_SHA256, ATTR_CONFIG, ATTR_CORRUPTION, ATTR_SEVERITY,
        ATTR_DATASET_ROOT, ATTR_DATASET_FINGERPRINT, ATTR_SEED,
    ),
    StoreKind.MASKS: (ATTR_DATASET, ATTR_SPLIT, ATTR_GEOMETRY, ATTR_CONFIG, ATTR_DATASET_ROOT,
                      ATTR_DATASET_FINGERPRINT),
    StoreKind.PROJECTIONS: (ATTR_DATASET, ATTR_SPLIT, ATTR_GEOMETRY, ATTR_GRID, ATTR_MASKS_PATH, ATTR_DATASET_ROOT,
                            ATTR_DATASET_FINGERPRINT),
    StoreKind.SCORES: (
        ATTR_MODEL, ATTR_DATASET, ATTR_SPLIT, ATTR_METHOD, ATTR_METHOD_KIND, ATTR_PAPER_START_LAYER,
        ATTR_GEOMETRY, ATTR_SCORING, ATTR_CACHE_PATH, ATTR_MASKS_PATH, ATTR_CORRUPTION, ATTR_SEVERITY,
        ATTR_DATASET_ROOT, ATTR_DATASET_FINGERPRINT, ATTR_SEED,
    ),
}
# No creation time: the same inputs give byte-identical stores (Snakemake's logs record when).
COMMON_ATTRS = (ATTR_KIND, ATTR_SCHEMA_VERSION, ATTR_PACKAGE_VERSION)


def provenance(kind: StoreKind, **attrs: Any) -> dict[str, Any]:
    """Build a store's attributes: the common provenance plus ``attrs`` (dicts become JSON text).

    Raises:
        ValueError: if an attribute the kind requires is missing (a programming error).
    """
    from rationality import __version__

    missing = [key for key in STORE_ATTRS[kind] if key not in attrs]
    if missing:
        raise ValueError(f"{kind.value} store needs attributes {missing}")
    encoded = {key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
               for key, value in attrs.items()}
    return {
        ATTR_KIND: kind.value,
        ATTR_SCHEMA_VERSION: SCHEMA_VERSION,
        ATTR_PACKAGE_VERSION: __version__,
        **encoded,
    }


def encoding(ds: xr.Dataset, chunks: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Zarr encoding of every data variable: :data:`COMPRESSORS`, and ``chunks`` per dimension if given."""
    result: dict[str, dict[str, Any]] = {}
    for name, variable in ds.data_vars.items():
        result[name] = {"compressors": COMPRESSORS}
        if chunks:
            result[name]["chunks"] = tuple(chunks.get(dim, size) for dim, size in zip(variable.dims, variable.shape))
    return result


def json_attr(ds: xr.Dataset, key: str) -> Any:
    """Decode an attribute that :func:`provenance` stored as JSON text."""
    value = ds.attrs[key]
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def validate(ds: xr.Dataset, kind: StoreKind, source: str = "<dataset>") -> xr.Dataset:
    """Check that ``ds`` is a complete store of ``kind``; return it unchanged.

    Raises:
        StoreError: naming ``source`` and every missing array, wrong dimension or attribute.
    """
    version = ds.attrs.get(ATTR_SCHEMA_VERSION)
    if ATTR_KIND in ds.attrs and version != SCHEMA_VERSION:
        age = "a newer" if isinstance(version, int) and version > SCHEMA_VERSION else "an older"
        raise StoreError(f"{source} has store schema version {version}, this rationality reads version "
                         f"{SCHEMA_VERSION}: written by {age} rationality; re-run the stage that wrote it"
                         + (" with that version" if age == "a newer" else ""))
    problems: list[str] = []
    found_kind = ds.attrs.get(ATTR_KIND)
    if found_kind != kind.value:
        problems.append(f"attribute {ATTR_KIND!r} is {found_kind!r}, expected {kind.value!r}")
    for key in COMMON_ATTRS + STORE_ATTRS[kind]:
        if key not in ds.attrs:
            problems.append(f"attribute {key!r} is missing")
    for name, spec in STORE_ARRAYS[kind].items():
        if name not in ds:
            problems.append(f"array {name!r} is missing")
        elif ds[name].dims != spec.dims:
            problems.append(f"array {name!r} has dims {ds[name].dims}, expected {spec.dims}")
        elif ds[name].dtype != np.dtype(spec.dtype):
            problems.append(f"array {name!r} has dtype {ds[name].dtype}, expected {spec.dtype}")
    if SAMPLE not in ds.coords:
        problems.append(f"coordinate {SAMPLE!r} (string sample ids) is missing")
    elif ds.indexes[SAMPLE].has_duplicates:
        problems.append(f"coordinate {SAMPLE!r} holds duplicate sample ids")
    if problems:
        raise StoreError(f"{source} is not a valid {kind.value} store: " + "; ".join(problems))
    return ds


def open_store(path: str, kind: StoreKind | tuple[StoreKind, ...]) -> xr.Dataset:
    """Open a finished store lazily (Dask-backed) and validate it as ``kind`` (or one of several kinds).

    Raises:
        StoreError: if ``path`` does not exist, is still being written, or fails :func:`validate`.
    """
    from pathlib import Path

    from rationality.store import PARTIAL_SUFFIX

    store_path = Path(path)
    if not store_path.exists():
        partial = store_path.with_name(store_path.name + PARTIAL_SUFFIX)
        hint = f" (an unfinished {partial} exists: its writer was interrupted)" if partial.exists() else ""
        raise StoreError(f"{path}: no such store{hint}")
    try:
        ds = xr.open_zarr(store_path, consolidated=True)  # written last: a store without it is unfinished
    except Exception as exc:  # zarr raises many kinds; the user needs the path and the cause
        raise StoreError(f"{path}: cannot be opened as a Zarr store ({exc})") from exc
    kinds = kind if isinstance(kind, tuple) else (kind,)
    found = next((k for k in kinds if ds.attrs.get(ATTR_KIND) == k.value), kinds[0])
    return validate(ds, found, source=str(path))


def sample_ids(ids: Any) -> np.ndarray:
    """Sample ids as the object array of Python strings every store uses for ``sample``."""
    return np.asarray([str(i) for i in ids], dtype=object)


def cache_dataset(
    ids: Any, class_names: Any, explainers: Any, start_layers: Any, grid: tuple[int, int],
    logits: Any, labels: Any, heatmaps: Any, attrs: Mapping[str, Any],
) -> xr.Dataset:
    """Assemble a cache dataset; arrays may be numpy or Dask, shapes as in the module docstring."""
    return xr.Dataset(
        {
            LOGITS: (STORE_ARRAYS[StoreKind.CACHE][LOGITS].dims, logits),
            LABEL: ((SAMPLE,), labels),
            HEATMAP: (STORE_ARRAYS[StoreKind.CACHE][HEATMAP].dims, heatmaps),
        },
        coords={
            SAMPLE: sample_ids(ids),
            CLASS: np.asarray(list(class_names), dtype=object),
            EXPLAINER: np.asarray(list(explainers), dtype=object),
            START_LAYER: np.asarray(list(start_layers), dtype=np.int32),
            GRID_Y: np.arange(grid[0], dtype=np.int32),
            GRID_X: np.arange(grid[1], dtype=np.int32),
        },
        attrs=dict(attrs),
    )


def masks_dataset(ids: Any, masks: Any, labels: Any, attrs: Mapping[str, Any]) -> xr.Dataset:
    """Assemble a mask dataset from ``masks`` [sample, y, x] bool and ``labels`` [sample]."""
    return xr.Dataset(
        {MASK: ((SAMPLE, PIXEL_Y, PIXEL_X), masks), LABEL: ((SAMPLE,), labels)},
        coords={SAMPLE: sample_ids(ids)},
        attrs=dict(attrs),
    )


#: The dataset provenance of the mock stores.
MOCK_DATASET = {ATTR_DATASET_ROOT: "/mock", ATTR_DATASET_FINGERPRINT: "0" * 64}


def mock_cache(
    n_samples: int = 6, n_classes: int = 3, grid: tuple[int, int] = (4, 4), n_layers: int = 2,
    explainers: tuple[str, ...] = ("generic_attention",), seed: int = 0, **attrs: Any,
) -> xr.Dataset:
    """A small valid cache with random positive heatmaps and logits, for tests."""
    rng = np.random.default_rng(seed)
    defaults = dict(model="mock", dataset="mock", split="test", method="zs", method_kind="zero_shot",
                    paper_start_layer=n_layers - 1, geometry={"resize": 16, "crop": 16},
                    image_normalization="model", checkpoint_sha256="0" * 64, config={}, corruption=CLEAN,
                    severity=0, seed=None, **MOCK_DATASET)
    return cache_dataset(
        ids=[f"mock-{i:04d}" for i in range(n_samples)],
        class_names=[f"class{c}" for c in range(n_classes)],
        explainers=explainers, start_layers=range(n_layers), grid=grid,
        logits=rng.normal(size=(n_samples, n_classes)).astype(np.float32),
        labels=(np.arange(n_samples) % n_classes).astype(np.int32),
        heatmaps=rng.random((n_samples, len(explainers), n_layers, *grid)).astype(np.float32),
        attrs=provenance(StoreKind.CACHE, **{**defaults, **attrs}),
    )


def mock_masks(
    n_samples: int = 6, n_classes: int = 3, size: tuple[int, int] = (16, 16), seed: int = 0,
    **attrs: Any,
) -> xr.Dataset:
    """A small valid mask store with one random rectangle per sample, for tests.

    Sample ids and labels match :func:`mock_cache` with the same ``n_samples``, ``n_classes``.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_samples, *size), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        mask[y0:y0 + size[0] // 2, x0:x0 + size[1] // 2] = True
    defaults = dict(dataset="mock", split="test", geometry={"resize": size[0], "crop": size[0]},
                    config={}, **MOCK_DATASET)
    return masks_dataset(
        ids=[f"mock-{i:04d}" for i in range(n_samples)], masks=masks,
        labels=(np.arange(n_samples) % n_classes).astype(np.int32),
        attrs=provenance(StoreKind.MASKS, **{**defaults, **attrs}),
    )
