"""``--threads``: a command computes on exactly the CPUs it was given (torch, DataLoader workers, Dask, BLAS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dask
import pytest
import torch
from dask.callbacks import Callback
from threadpoolctl import threadpool_info
from torch.utils.data import DataLoader

from rationality.cli import main
from rationality.cpus import cpu_budget
from rationality.data.geometry import Geometry
from rationality.data.masks import build_mask_store
from rationality.infer import run_inference
from rationality.train import train_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model_spec: dict, synthetic_spec: dict) -> Path:
    return train_checkpoint(dict(tiny_model_spec), synthetic_spec, {"kind": "zero_shot"}, "train",
                            tmp_path_factory.mktemp("zs"))


@pytest.fixture
def two_torch_threads():
    """Start from more torch threads than the command is given, so that the budget has to lower them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def infer_args(checkpoint: Path, synthetic_spec: dict, out: Path) -> list[str]:
    dataset = {key: value for key, value in synthetic_spec.items() if key != "name"}
    return ["infer", "--checkpoint", str(checkpoint), "--dataset-name", "synth", "--dataset", json.dumps(dataset),
            "--split", "test", "--batch-size", "4", "--device", "cpu", "--out", str(out)]


def test_infer_uses_one_torch_thread_and_no_more_loader_workers(
        checkpoint: Path, synthetic_spec: dict, tmp_path: Path, two_torch_threads: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen = []
    original = DataLoader.__init__

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("num_workers", 0), torch.get_num_threads()))
        original(self, *args, **kwargs)

    monkeypatch.setattr(DataLoader, "__init__", spy)
    out = tmp_path / "cache.zarr"
    assert main([*infer_args(checkpoint, synthetic_spec, out), "--num-workers", "3", "--threads", "1"]) == 0
    assert seen == [(1, 1)]
    captured = capsys.readouterr()
    assert "num_workers 3 is more than --threads 1: loading images with 1 workers" in captured.out
    assert "rationality infer: torch " in captured.err and ", 1 thread, CPU " in captured.err
    assert torch.get_num_threads() == 2  # restored after the command


class DaskSpy(Callback):
    """Records the scheduler settings, the BLAS threads and the threads that ran each task."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: list[tuple] = []
        self.task_threads: set[int] = set()

    def _start(self, dsk) -> None:
        blas = frozenset(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        self.settings.append((dask.config.get("scheduler"), dask.config.get("num_workers"), blas))

    def _pretask(self, key, dsk, state) -> None:
        self.task_threads.add(threading.get_ident())


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, synthetic_spec: dict) -> tuple[Path, Path]:
    """(cache store, mask store) of the synthetic test split."""
    work = tmp_path_factory.mktemp("stores")
    cache = run_inference(checkpoint, synthetic_spec, "test", work / "cache.zarr", explainers=["generic_attention"],
                          device="cpu")
    return cache, build_mask_store(synthetic_spec, "test", Geometry(64, 64), work / "masks.zarr")


@pytest.mark.parametrize("threads", [1, 2])
def test_score_runs_dask_on_that_many_threads(threads: int, stores: tuple[Path, Path], tmp_path: Path) -> None:
    cache, masks = stores
    with DaskSpy() as spy:
        assert main(["score", "--cache", str(cache), "--masks", str(masks), "--out", str(tmp_path / "scores.zarr"),
                     "--threads", str(threads)]) == 0
    assert spy.settings and set(spy.settings) == {("threads", threads, frozenset({1}))}
    assert 1 <= len(spy.task_threads) <= threads
    assert dask.config.get("num_workers", None) is None  # restored after the command


def test_torchrun_processes_share_the_threads(monkeypatch: pytest.MonkeyPatch, two_torch_threads: None) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with cpu_budget(2) as per_process:
        assert per_process == torch.get_num_threads() == 1


def test_threads_below_one_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["rescore", "no-such.zarr", "--threads", "0"]) == 2
    assert "rationality rescore: error: --threads must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_fresh_process_imports_torch_inside_the_budget(checkpoint: Path, synthetic_spec: dict,
                                                         tmp_path: Path) -> None:
    """The CLI as jobs run it: torch is first imported inside the budget, against an environment asking for 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-m", "rationality", *infer_args(checkpoint, synthetic_spec,
                                                                              tmp_path / "cache.zarr"),
                             "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.startswith("rationality infer: torch ") and ", 1 thread, CPU " in result.stderr
