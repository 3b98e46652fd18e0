"""DDP under the shared training loop: two CPU processes (gloo) train exactly what one process trains,
also when each optimiser step is accumulated over micro-steps."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from rationality.methods._training import Run, TrainingOptions, train_epochs, world
from rationality.methods.linear_probe import classify_step

OPTIONS = TrainingOptions(lr=1e-2, epochs=3, batch_size=8)


def _problem() -> tuple[nn.Module, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 16, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    torch.manual_seed(1)
    return nn.Linear(16, 4), TensorDataset(features, labels)


def _ddp_worker(rank: int, root: Path, max_batch: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=2)
    try:
        assert world() == (rank, 2)
        head, dataset = _problem()
        seen = []

        def counting_step(module: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            seen.append(len(batch[1]))
            return classify_step(module, batch)

        train_epochs(head, counting_step, dataset, OPTIONS, Run(root / "ddp", seed=0, max_batch_per_step=max_batch))
        (root / f"seen-{rank}.txt").write_text(" ".join(map(str, seen)))
        if rank == 0:
            torch.save(head.state_dict(), root / "ddp-head.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("max_batch", "passes"), [(None, ["4"] * 15), (2, ["2"] * 30)])
def test_two_processes_train_the_same_weights_as_one(tmp_path: Path, max_batch: int | None, passes: list[str]) -> None:
    """Batches of 8: each process takes 4 in one pass, or 2 in each of two micro-steps (max_batch 2)."""
    head, dataset = _problem()
    train_epochs(head, classify_step, dataset, OPTIONS, Run(tmp_path / "single", seed=0))
    mp.spawn(_ddp_worker, args=(tmp_path, max_batch), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"seen-{rank}.txt").read_text() == " ".join(passes)
    ddp = torch.load(tmp_path / "ddp-head.pt", weights_only=True)
    for name, tensor in head.state_dict().items():
        torch.testing.assert_close(ddp[name], tensor, atol=1e-6, rtol=0)
    assert (head.weight - _problem()[0].weight).abs().max() > 1e-2  # training moved the weights
    single_log = list(csv.reader((tmp_path / "single" / "train_log.csv").open()))
    ddp_log = list(csv.reader((tmp_path / "ddp" / "train_log.csv").open()))
    assert len(ddp_log) == len(single_log) == 4
    for single_row, ddp_row in zip(single_log[1:], ddp_log[1:]):  # losses and accuracies over all samples
        assert [float(v) for v in ddp_row] == pytest.approx([float(v) for v in single_row], abs=1e-5)
