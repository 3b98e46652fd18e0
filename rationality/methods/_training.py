"""The training loop every trained method shares: Adam, cross-entropy, seeded, logged per epoch."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from rationality.data.loader import make_loader


def train_classifier(
    parameters: Iterable[torch.nn.Parameter], forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset, *, lr: float, epochs: int, batch_size: int, seed: int, log_path: Path,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    description: str = "train",
) -> None:
    """Minimise cross-entropy of ``forward(inputs)`` against labels with Adam.

    Args:
        parameters: what the optimiser updates.
        forward: inputs [B, ...] -> logits [B, C].
        dataset: items ``(inputs, label, ...)``; shuffled with a generator seeded by ``seed``.
        log_path: CSV with one row per epoch: epoch, mean loss, training accuracy.
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(list(parameters), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed)
    with log_path.open("w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["epoch", "loss", "accuracy"])
        for epoch in range(1, epochs + 1):
            loss_sum, correct, seen = 0.0, 0, 0
            for batch in tqdm(loader, desc=f"{description} epoch {epoch}/{epochs}", leave=False):
                inputs, labels = batch[0], torch.as_tensor(batch[1])
                logits = forward(inputs)
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(dim=1) == labels).sum())
                seen += len(labels)
            log.writerow([epoch, f"{loss_sum / seen:.6f}", f"{correct / seen:.6f}"])
            log_file.flush()
