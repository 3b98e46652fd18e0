"""Datasets: readers for on-disk layouts, the shared image/mask geometry, synthetic demo data."""

from rationality.data.base import DatasetReader, Sample, create_dataset, list_datasets, register_dataset
from rationality.data.geometry import Geometry

__all__ = [
    "DatasetReader", "Geometry", "Sample", "create_dataset", "list_datasets", "register_dataset",
]
