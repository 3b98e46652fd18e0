"""Model-input tensors from a dataset reader, and reproducible data loaders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from rationality.cpus import loader_workers
from rationality.data.base import DatasetReader, Sample
from rationality.data.geometry import Geometry


class ImageDataset(Dataset):
    """The samples of a split as normalised pixel tensors in the model-input frame.

    Args:
        reader: where images come from.
        samples: the samples, in the order the dataset indexes them.
        geometry: resize + center crop shared with the masks.
        mean: per-channel RGB mean applied to [0, 1] pixels.
        std: per-channel RGB standard deviation applied to [0, 1] pixels.
    """

    def __init__(
        self,
        reader: DatasetReader,
        samples: Sequence[Sample],
        geometry: Geometry,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"need 3 means and 3 positive stds, got mean={mean!r}, std={std!r}")
        self.reader = reader
        self.samples = list(samples)
        self.geometry = geometry
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        """Returns (pixels float32 [3, crop, crop], label, index)."""
        sample = self.samples[index]
        image = self.geometry.apply_image(self.reader.load_image(sample))
        return (to_tensor(image) - self.mean) / self.std, sample.label, index


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as float32 [3, H, W] in [0, 1] (the same values as torchvision's ToTensor)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A loader over ``dataset``; with ``shuffle``, the order is fixed by ``seed``.

    Args:
        num_workers: decoding processes (0: the calling process), at most ``--threads``.
        pin_memory: put batches in page-locked memory, for non-blocking copies to a GPU.
    """
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=loader_workers(num_workers), pin_memory=pin_memory)
