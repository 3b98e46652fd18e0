"""A GPU-stage job killed mid-run leaves nothing that looks finished, and a re-run resumes to the same bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rationality.store import PROGRESS_SUFFIX, partial_path
from rationality.train import train_checkpoint

RATIONALITY = Path(sys.executable).with_name("rationality")

pytestmark = pytest.mark.slow  # runs the CLI in subprocesses


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store by relative path (Snakemake's timestamp file excluded)."""
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}


def infer_command(checkpoint: Path, dataset: dict, out: Path) -> list[str]:
    spec = {key: value for key, value in dataset.items() if key != "name"}
    return [str(RATIONALITY), "infer", "--checkpoint", str(checkpoint), "--dataset-name", dataset["name"],
            "--dataset", json.dumps(spec), "--split", "test", "--explainers", "generic_attention",
            "attention_gradient", "--batch-size", "1", "--chunk-size", "1", "--device", "cpu",
            "--out", str(out)]


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory: pytest.TempPathFactory, tiny_model_spec: dict, synthetic_spec: dict) -> Path:
    out = tmp_path_factory.mktemp("checkpoint")
    return train_checkpoint(tiny_model_spec, synthetic_spec, {"kind": "zero_shot"}, "train", out)


def test_same_inputs_give_byte_identical_stores(zero_shot: Path, synthetic_spec: dict, tmp_path: Path) -> None:
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    for out in (first, second):
        subprocess.run(infer_command(zero_shot, synthetic_spec, out), check=True, capture_output=True)
    assert store_bytes(first) == store_bytes(second)


def test_sigkill_then_resume_gives_the_uninterrupted_store(zero_shot: Path, synthetic_spec: dict,
                                                           tmp_path: Path) -> None:
    uninterrupted, killed = tmp_path / "uninterrupted.zarr", tmp_path / "killed.zarr"
    subprocess.run(infer_command(zero_shot, synthetic_spec, uninterrupted), check=True, capture_output=True)

    progress = partial_path(killed).with_name(partial_path(killed).name + PROGRESS_SUFFIX)
    job = subprocess.Popen(infer_command(zero_shot, synthetic_spec, killed), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("done"):
            job.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert job.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    done_before = len(json.loads(progress.read_text())["done"])
    assert not killed.exists() and partial_path(killed).exists()
    assert 0 < done_before < 12

    resumed = subprocess.run(infer_command(zero_shot, synthetic_spec, killed), check=True, capture_output=True,
                             text=True)
    pending = 12 - done_before
    assert f": 0/{pending} images\n" in resumed.stderr  # the progress lines count only the images left
    assert f": done, {pending} images in " in resumed.stderr
    assert f"{done_before} of 12 chunks (1 samples each) are written; continuing at sample {done_before}" in resumed.stderr
    assert not partial_path(killed).exists() and not progress.exists()
    assert store_bytes(killed) == store_bytes(uninterrupted)
