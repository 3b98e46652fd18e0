"""The training loop every trained method shares.

Seeded, logged per epoch, resumable, with optional mixed precision and DDP:

* **Data order** depends only on (seed, epoch): every epoch draws a fresh permutation from a
  generator seeded with both, so a run resumed at epoch k sees the same batches as one that never
  stopped.
* **Resuming**: after every epoch the trained parameters, the optimiser (and gradient scaler) state,
  the RNG state and the log rows go atomically to ``<run_dir>/train_state.pt``, tagged with a
  fingerprint of everything that defines the run. A later call with the same fingerprint continues
  after the last finished epoch; the same seed then gives the same final weights as an uninterrupted
  run (tested). The caller deletes the state once the final checkpoint is written.
* **Log**: ``<run_dir>/train_log.csv``, one row per epoch: epoch, mean loss, training accuracy.
* **Precision** (:mod:`rationality.precision`): ``tf32`` runs float32 matrix products on TensorFloat-32;
  ``bf16`` or ``fp16`` runs forward passes under ``torch.autocast`` (fp16 with a gradient scaler);
  parameters and optimiser state stay fp32.
* **DDP**: started under ``torchrun`` (``WORLD_SIZE`` > 1), each process takes an equal share of every
  global batch (``batch_size`` stays the global batch size), gradients are averaged across processes,
  and only rank 0 writes the log and the state.
* **Gradient accumulation**: ``batch_size`` is the global batch of one optimiser step, whatever the
  hardware. When it does not fit ``Run.max_batch_per_step`` images per process, each step runs as
  several micro-steps whose gradients add up before the optimiser steps (:func:`plan_steps`). Every
  micro-step's mean loss is weighted by its share of the step's images, so for a loss that is a mean
  over independent samples (cross-entropy, no batch statistics: LP, FT, CoOp, Tip-Adapter-F) the
  step's gradient is that of the whole batch, to float rounding (tested). A loss that couples the
  samples of a batch (FLCP's contrastive loss) declares the unit it cannot split
  (:meth:`TrainingOptions.step_unit`): micro-steps hold whole units, and a unit larger than a
  micro-step is a ConfigError. The log says how each step is split.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from rationality.errors import ConfigError
from rationality.precision import autocast_dtype as precision_dtype, check_precision, float32_matmul_precision

TRAIN_LOG_FILE = "train_log.csv"
TRAIN_STATE_FILE = "train_state.pt"
OPTIMIZERS = ("adam", "adamw")

#: A training step: (the module to call, a batch already on the device) -> (mean loss, logits [B, C], labels [B]).
Step = Callable[[nn.Module, Sequence[Any]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclasses.dataclass
class TrainingOptions:
    """Optimisation hyper-parameters every trained method takes (all change results).

    Defaults are the paper's: Adam, betas (0.9, 0.999), eps 1e-8, no weight decay, fp32.
    """

    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    precision: str = "fp32"
    #: Training images per class (a seeded draw, the same for every method; see
    #: :func:`~rationality.data.shots.few_shot_samples`), or None for the whole training split.
    shots: int | None = None

    #: Whether a training step passes images through the model (False: precomputed embeddings, so
    #: ``max_batch_per_step``, a bound on images per pass, does not apply).
    passes_images: ClassVar[bool] = True

    def step_unit(self) -> int | None:
        """How many consecutive samples of a batch one loss couples, so a micro-step must keep them
        together: 1 (samples independent), a group size, or None for the whole global batch."""
        return 1

    def step_plan(self, processes: int, max_batch_per_step: int | None) -> StepPlan:
        """How each optimiser step runs on ``processes`` with at most ``max_batch_per_step`` images per pass."""
        limit = max_batch_per_step if self.passes_images else None
        return plan_steps(self.batch_size, processes, limit, self.step_unit())

    def check_training_options(self) -> None:
        """Raise ConfigError for an unknown optimiser or precision, or a non-positive size."""
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"shots must be at least 1 (or null for the whole split), got {self.shots}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check_precision(self.precision, key="precision")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {self.epochs}, "
                              f"{self.batch_size}, {self.lr}")


@dataclasses.dataclass(frozen=True)
class Run:
    """Where and as what one training run executes.

    Attributes:
        run_dir: directory for the log and the resumable state.
        seed: seeds data order and everything random in training.
        fingerprint: identifies the run (model, dataset, method, seed); a saved state with another
            fingerprint is not resumed.
        device: where tensors go.
        num_workers: image-loading processes.
        max_batch_per_step: the most images one process puts through one forward and backward pass
            (what fits its memory); a larger global batch is accumulated over micro-steps. None: no
            limit, one micro-step per optimiser step.
    """

    run_dir: Path
    seed: int = 0
    fingerprint: str = ""
    device: torch.device = torch.device("cpu")
    num_workers: int = 0
    max_batch_per_step: int | None = None

    def forward_batch(self, batch_size: int) -> int:
        """The batch size of a pass without gradients (embeddings): ``batch_size`` within the limit."""
        return batch_size if self.max_batch_per_step is None else min(batch_size, self.max_batch_per_step)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How one optimiser step's global batch runs on the hardware.

    Attributes:
        batch_size: images per optimiser step, all processes together (the method's ``batch_size``).
        processes: data-parallel processes (DDP), each taking an equal share of every micro-step.
        micro_steps: forward/backward passes per optimiser step (gradient accumulation when above 1).
        micro_batch: images per micro-step, all processes together (the last may hold fewer).
    """

    batch_size: int
    processes: int
    micro_steps: int
    micro_batch: int

    def describe(self) -> str:
        """One log line: the global batch and how it is split."""
        per_process = -(-self.micro_batch // self.processes)
        split = (f"{self.micro_steps} micro-steps x {self.processes} process(es) x up to {per_process} images, "
                 f"gradients accumulated" if self.micro_steps > 1
                 else f"one pass on {self.processes} process(es), up to {per_process} images each")
        return f"optimiser steps of {self.batch_size} images (batch_size, the global batch): {split}"


def plan_steps(batch_size: int, processes: int, max_batch_per_step: int | None, unit: int | None) -> StepPlan:
    """Split a global batch into as few, as equal micro-steps as fit ``max_batch_per_step`` per process.

    Args:
        batch_size: the global batch of one optimiser step.
        processes: data-parallel processes.
        max_batch_per_step: images one process can pass at once; None for no limit.
        unit: consecutive samples that must share a micro-step (see :meth:`TrainingOptions.step_unit`);
            None for the whole batch.

    Raises:
        ConfigError: a unit does not fit in one micro-step.
    """
    unit = batch_size if unit is None else min(unit, batch_size)
    if max_batch_per_step is None:
        return StepPlan(batch_size, processes, 1, batch_size)
    units = -(-batch_size // unit)
    units_per_step = processes * max_batch_per_step // unit
    if units_per_step == 0:
        raise ConfigError(
            f"a loss over {unit} images at once (the method couples them) does not fit train.max_batch_per_step "
            f"{max_batch_per_step} on {processes} process(es): raise max_batch_per_step to at least "
            f"{-(-unit // processes)}, run on more processes, or (FLCP) set contrastive_batch_size to a divisor "
            f"of batch_size that fits")
    micro_steps = -(-units // units_per_step)
    return StepPlan(batch_size, processes, micro_steps, unit * -(-units // micro_steps))


def init_distributed(device: str) -> torch.device:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; the device this process trains on.

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun
            with CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if dist.get_rank() == 0:
            print(f"DDP: {dist.get_world_size()} processes ({dist.get_backend()})", flush=True)
        if use_cuda:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
    if device == "auto":
        return torch.device("cuda" if use_cuda else "cpu")
    return torch.device(device)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclasses.dataclass(frozen=True)
class MicroStep:
    """This process's part of one micro-step.

    Attributes:
        indices: its samples (dataset indices).
        weight: the factor of its mean loss: its samples' share of the optimiser step's images,
            times the number of processes (DDP averages the processes' gradients).
        last: the optimiser steps after this micro-step.
    """

    indices: list[int]
    weight: float
    last: bool


def _epoch_micro_steps(n: int, plan: StepPlan, seed: int, epoch: int) -> Iterator[MicroStep]:
    """This process's micro-steps of one epoch's (seed, epoch)-seeded permutation, step by step.

    Under DDP a micro-step smaller than the number of processes is dropped: a process without a
    share would skip the pass the others wait for.
    """
    rank, size = world()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    for start in range(0, n, plan.batch_size):
        batch = order[start : start + plan.batch_size]
        micro = [batch[i : i + plan.micro_batch] for i in range(0, len(batch), plan.micro_batch)]
        micro = [part for part in micro if len(part) >= size]
        total = sum(len(part) for part in micro)
        for i, part in enumerate(micro):
            share = part[rank * len(part) // size : (rank + 1) * len(part) // size]
            yield MicroStep(share, len(share) * size / total, i == len(micro) - 1)


def _make_optimizer(parameters: list[nn.Parameter], options: TrainingOptions) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if options.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=options.lr, betas=(options.adam_beta1, options.adam_beta2), eps=options.eps,
                weight_decay=options.weight_decay)


def _to_device(batch: Sequence[Any], device: torch.device) -> list[Any]:
    return [item.to(device) if isinstance(item, torch.Tensor) else item for item in batch]


def train_epochs(module: nn.Module, step: Step, dataset: Dataset, options: TrainingOptions, run: Run,
                 description: str = "train") -> None:
    """Train the parameters of ``module`` that require grad, minimising ``step``'s loss.

    Args:
        module: the model a step calls (wrapped in DDP under torchrun). Only its parameters with
            ``requires_grad`` are optimised and saved in the resumable state.
        step: computes a batch's mean loss and logits (for the logged accuracy).
        dataset: items ``(inputs, label, ...)``.
        options: the method's training hyper-parameters.
        run: directory, seed, fingerprint, device.
    """
    options.check_training_options()
    rank, size = world()
    plan = options.step_plan(size, run.max_batch_per_step)
    if rank == 0:
        print(f"{description}: {plan.describe()}", flush=True)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    optimizer = _make_optimizer([p for _, p in named], options)
    autocast_dtype = precision_dtype(options.precision)
    scaler = torch.amp.GradScaler(run.device.type, enabled=options.precision == "fp16")
    caller = module
    if size > 1:
        caller = nn.parallel.DistributedDataParallel(
            module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    torch.manual_seed(run.seed)
    # Decoding processes pay for images; tensors already in memory (embeddings) are read in this process.
    workers = 0 if isinstance(dataset, TensorDataset) else run.num_workers
    first_epoch, rows = _resume(run, dict(named), optimizer, scaler)
    for epoch in range(first_epoch, options.epochs + 1):
        micro_steps = list(_epoch_micro_steps(len(dataset), plan, run.seed, epoch))
        loader = DataLoader(dataset, batch_sampler=[m.indices for m in micro_steps], num_workers=workers,
                            pin_memory=run.device.type == "cuda")
        totals = torch.zeros(3, dtype=torch.float64, device=run.device)  # loss sum, correct, seen
        optimizer.zero_grad(set_to_none=True)
        for micro, batch in zip(micro_steps, tqdm(loader, desc=f"{description} epoch {epoch}/{options.epochs}",
                                                  leave=False, disable=rank != 0)):
            batch = _to_device(batch, run.device)
            with _gradient_sync(caller, micro.last), float32_matmul_precision(options.precision):
                with torch.autocast(run.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss, logits, labels = step(caller, batch)
                scaler.scale(loss * micro.weight).backward()
            if micro.last:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            totals += torch.tensor([float(loss.detach()) * len(labels), int((logits.argmax(1) == labels).sum()),
                                    len(labels)], dtype=torch.float64, device=run.device)
        if size > 1:
            dist.all_reduce(totals)
        loss_sum, correct, seen = totals.tolist()
        rows.append([epoch, f"{loss_sum / max(seen, 1):.6f}", f"{correct / max(seen, 1):.6f}"])
        if rank == 0:
            _write_log(run.run_dir / TRAIN_LOG_FILE, rows)
            _save_state(run, epoch, dict(named), optimizer, scaler, rows)
    if rank == 0 and options.epochs == 0:
        _write_log(run.run_dir / TRAIN_LOG_FILE, rows)


def _gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for micro-steps before the last of an optimiser step (their gradients only
    accumulate locally; the last backward pass averages the sum across processes)."""
    if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def _write_log(path: Path, rows: list[list[Any]]) -> None:
    staging = path.with_name(path.name + ".tmp")
    with staging.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss", "accuracy"])
        writer.writerows(rows)
    os.replace(staging, path)


def _save_state(run: Run, epoch: int, parameters: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, rows: list[list[Any]]) -> None:
    state = {"fingerprint": run.fingerprint, "epoch": epoch, "rows": rows,
             "parameters": {name: p.detach().cpu() for name, p in parameters.items()},
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state()}
    path = run.run_dir / TRAIN_STATE_FILE
    staging = path.with_name(path.name + ".tmp")
    torch.save(state, staging)
    os.replace(staging, path)


def _resume(run: Run, parameters: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler) -> tuple[int, list[list[Any]]]:
    """Load a saved state of this run, if any: (first epoch to run, log rows so far)."""
    path = run.run_dir / TRAIN_STATE_FILE
    if not path.is_file():
        return 1, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != run.fingerprint or set(state["parameters"]) != set(parameters):
        print(f"{path}: saved by another run (model, dataset, method or seed differ); starting from epoch 1")
        return 1, []
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state["parameters"][name])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    print(f"{path}: resuming after epoch {state['epoch']}")
    return state["epoch"] + 1, state["rows"]
