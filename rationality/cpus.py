"""The CPUs a command computes on: one number, ``--threads``, applied in one place.

Every ``rationality`` command runs under :func:`cpu_budget` (``rationality.cli.main`` enters it), so
a job given N CPUs (Snakemake's ``threads``, a SLURM allocation) never uses more:

* torch's intra-op threads: N (under ``torchrun``, N divided among the node's processes);
* DataLoader workers: at most N (:func:`loader_workers`; a larger ``num_workers`` is lowered, and
  the log says so);
* Dask's local scheduler (scoring, mask projection): the threaded scheduler with N worker threads;
* numpy's BLAS: one thread in each of them (otherwise every Dask thread would start its own pool).

The default is the number of CPUs the process may run on (its affinity mask: what a cgroup or SLURM
gives it), not the machine's core count.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Iterator

import dask
from threadpoolctl import threadpool_limits

from rationality.errors import ConfigError

#: Read by OpenMP and MKL when torch loads, for commands that import torch inside the budget.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_budget: int | None = None


def available_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def processes_per_node() -> int:
    """Processes sharing this job's CPUs: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@contextlib.contextmanager
def cpu_budget(threads: int) -> Iterator[int]:
    """Compute on ``threads`` CPUs within the block (see the module docstring); restores the previous settings.

    torch need not be imported yet: the thread variables it reads when it loads are set for the block.

    Yields:
        The threads of this process (``threads`` divided among torchrun's processes on the node).

    Raises:
        ConfigError: for ``threads`` below 1.
    """
    global _budget
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    per_process = max(1, threads // processes_per_node())
    torch = sys.modules.get("torch")
    previous_budget, previous_torch = _budget, torch.get_num_threads() if torch else None
    previous_variables = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    _budget = per_process
    os.environ.update({name: str(per_process) for name in THREAD_VARIABLES})
    if torch:
        torch.set_num_threads(per_process)
    try:
        with dask.config.set(scheduler="threads", num_workers=per_process), threadpool_limits(1, user_api="blas"):
            yield per_process
    finally:
        _budget = previous_budget
        if previous_torch is not None:
            torch.set_num_threads(previous_torch)
        for name, value in previous_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def loader_workers(requested: int) -> int:
    """DataLoader workers for a requested ``num_workers``: at most the budget's threads (logged when lowered)."""
    if _budget is not None and requested > _budget:
        print(f"num_workers {requested} is more than --threads {_budget}: loading images with {_budget} workers")
        return _budget
    return requested


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> str:
    """What a model stage's floating-point results depend on besides its inputs, for its log.

    torch's version, its threads, and the CPU, whose instruction set decides the kernels torch, MKL
    and oneDNN run (torch's own choice is named: ``AVX2``, ``AVX512``, ...).
    """
    import torch

    threads = torch.get_num_threads()
    return (f"torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}, "
            f"CPU {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels)")
