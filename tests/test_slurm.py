"""The workflow through ``--profile profiles/slurm`` on a real single-node SLURM cluster (tests/slurm_cluster.py).

Every assertion about what ran reads SLURM's own records (``scontrol show job``, slurmctld's job
completion file), not Snakemake's account of it. Skipped only where SLURM's programs are not
installed; ``.ci/run`` installs them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.fixture_trees_paper import write_paper_config
from tests.slurm_cluster import SLURM_TEST_OPTIONS, SlurmCluster, missing_binaries
from tests.test_workflow import REPO, SNAKEMAKE, planned_jobs, tiny_config

pytestmark = pytest.mark.slow

#: Epochs of the demo's fine-tuning here: enough that the test can cancel the job after its first
#: epoch and before its last, so that the retry has something to resume.
FT_EPOCHS = 10
#: The demo's training and inference ask for GPUs; training runs on 2 processes (DDP) per job.
NPROC = 2


def slurm_snakemake(cluster: SlurmCluster, workdir: Path, *args: str, configfile: str = "config.yaml",
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start Snakemake on the workflow through profiles/slurm, its output going to ``workdir /
    "snakemake.out"`` (a pipe nobody reads while it runs would block it). Snakemake ignores SIGTERM
    while jobs run: ``timeout -k`` kills it for sure."""
    command = ["timeout", "-k", "30", "2400", str(SNAKEMAKE), *args, "-s", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--profile", str(REPO / "profiles" / "slurm"), *SLURM_TEST_OPTIONS,
               "--configfile", str(workdir / configfile)]
    path = f"{SNAKEMAKE.parent}:{cluster.env['PATH']}"
    with (workdir / "snakemake.out").open("w") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                env={**cluster.env, "PATH": path, **(env or {})})


def finish(process: subprocess.Popen, workdir: Path, timeout: float) -> str:
    """Wait for a :func:`slurm_snakemake` process; its output."""
    process.wait(timeout)
    return (workdir / "snakemake.out").read_text()


def rule_of(job: dict[str, str]) -> str:
    """The Snakemake rule of a SLURM job, from the comment the plugin gives it."""
    return re.match(r"rule_(\w+?)(?:_wildcards_|$)", job["Comment"]).group(1)


def when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


@pytest.fixture(scope="module")
def cluster():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found; "
                    "apt-get install slurmctld slurmd slurm-client munge)")
    # 8 CPUs and 64 GB declared, so that the paper grid's jobs (8 CPUs, 32 GB each) can be submitted
    with SlurmCluster(cpus=8, memory_mb=65536, gpus=4) as running:
        yield running


@pytest.fixture(scope="module")
def demo_through_slurm(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):
    """The demo's main table through SLURM, with fake GPUs and DDP training; its fine-tuning job is
    cancelled after its first epoch (as a time limit or a lost node would end it) and retried.

    Returns (workdir, Snakemake's output, this run's jobs as SLURM holds them, the jobs SLURM
    recorded as finished).
    """
    workdir = tmp_path_factory.mktemp("slurm-demo")
    config = tiny_config()
    config["train"] = {"nproc_per_node": NPROC}
    config["methods"]["ft"]["epochs"] = FT_EPOCHS
    config["resources"] = {stage: {"threads": 1, "mem_mb": 500, "runtime": 10} for stage in config["resources"]}
    config["resources"]["train"].update(threads=2, gpu=1)
    config["resources"]["infer"].update(gpu=1)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    before = {job["JobId"] for job in cluster.jobs()}
    process = slurm_snakemake(cluster, workdir, "results/tables/pt_ir.csv")
    state = workdir / "results" / "checkpoints" / "tiny-vit" / "demo" / "ft" / "train_state.pt"
    while process.poll() is None and not state.exists():
        time.sleep(0.1)
    running = [job for job in cluster.jobs() if job.get("Comment", "").endswith("_demo_ft")
               and rule_of(job) == "train" and job["JobState"] == "RUNNING"]
    for job in running:
        subprocess.run(["scancel", job["JobId"]], env=cluster.env, check=True)
    output = finish(process, workdir, timeout=2500)
    assert process.returncode == 0, output[-6000:]
    ours = [job for job in cluster.jobs() if job["JobId"] not in before]
    return workdir, output, ours, cluster.completed_jobs()


def test_every_job_of_the_demo_ran_as_a_slurm_job(demo_through_slurm) -> None:
    workdir, output, jobs, completed = demo_through_slurm
    planned = planned_jobs(output)
    assert sum(planned.values()) == 14
    finished = [job for job in jobs if job["JobState"] == "COMPLETED"]
    assert {rule: sum(rule_of(job) == rule for job in finished) for rule in planned} == planned
    assert {job["NodeList"] for job in finished} == {"localhost"}
    recorded = {job["JobId"]: job["JobState"] for job in completed}  # slurmctld's permanent record
    assert all(recorded[job["JobId"]] == "COMPLETED" for job in finished)
    table = pd.read_csv(workdir / "results" / "tables" / "pt_ir.csv")
    assert set(table["method"]) == {"zs", "lp", "ft"} and (table["n"] == 12).all()


def test_gpu_jobs_get_their_gpus_and_cpus_and_ddp_starts_one_process_per_gpu(demo_through_slurm) -> None:
    workdir, _, jobs, _ = demo_through_slurm
    finished = [job for job in jobs if job["JobState"] == "COMPLETED"]
    asked = {(rule_of(job), job.get("JOB_GRES", "(null)"), job["NumCPUs"]) for job in finished}
    assert asked == {("synthetic_data", "(null)", "1"), ("masks", "(null)", "1"), ("project_masks", "(null)", "1"),
                     ("pretrain", "gpu:1", "2"), ("train", f"gpu:{NPROC}", "2"), ("infer", "gpu:1", "1"),
                     ("score", "(null)", "1"), ("pt_ir_table", "(null)", "1")}
    for method in ("zs", "lp", "ft"):
        log = (workdir / "results" / "logs" / "train" / "tiny-vit" / "demo" / f"{method}.log").read_text()
        assert f"DDP: {NPROC} processes (gloo)" in log


def test_gpu_jobs_ran_side_by_side(demo_through_slurm) -> None:
    """No global GPU cap on a cluster: the three training jobs (2 fake GPUs each, 4 on the node)
    were submitted together and two of them ran at the same time."""
    _, _, jobs, _ = demo_through_slurm
    spans = [(when(job["StartTime"]), when(job["EndTime"])) for job in jobs if rule_of(job) == "train"]
    assert any(a_start < b_end and b_start < a_end
               for i, (a_start, a_end) in enumerate(spans) for b_start, b_end in spans[i + 1:])


def test_a_cancelled_training_job_is_retried_and_resumes(demo_through_slurm) -> None:
    """profiles/slurm retries a failed job with runtime x attempt; training resumes from train_state.pt."""
    workdir, _, jobs, _ = demo_through_slurm
    ft = sorted((job for job in jobs if rule_of(job) == "train" and job["Comment"].endswith("_demo_ft")),
                key=lambda job: int(job["JobId"]))
    assert [job["JobState"] for job in ft] == ["CANCELLED", "COMPLETED"]
    assert [job["TimeLimit"] for job in ft] == ["00:10:00", "00:20:00"]
    log = (workdir / "results" / "logs" / "train" / "tiny-vit" / "demo" / "ft.log").read_text()
    resumed = re.search(r"resuming after epoch (\d+)", log)
    assert resumed and 1 <= int(resumed.group(1)) < FT_EPOCHS
    rows = pd.read_csv(workdir / "results" / "checkpoints" / "tiny-vit" / "demo" / "ft" / "train_log.csv")
    assert list(rows["epoch"]) == list(range(1, FT_EPOCHS + 1))


def test_paper_grid_submits_its_gpu_jobs_side_by_side(cluster: SlurmCluster, tmp_path: Path) -> None:
    """config/paper.yaml through profiles/slurm into the cluster's down partition (chosen with the
    documented RATIONALITY_SLURM_PARTITION): Snakemake submits every training job of the grid at once
    (none waits for another's GPU), each asking for the paper's per-job resources."""
    from rationality.config import run_triples, validate_config

    runs = len(run_triples(validate_config(write_paper_config(tmp_path))))
    process = slurm_snakemake(cluster, tmp_path, "results/tables/pt_ir.csv", configfile="paper.yaml",
                              env={"RATIONALITY_SLURM_PARTITION": "held"})
    deadline = time.monotonic() + 900
    gpu_jobs = []
    while process.poll() is None and len(gpu_jobs) < runs and time.monotonic() < deadline:
        time.sleep(1)
        gpu_jobs = [job for job in cluster.jobs() if job["Partition"] == "held" and job["JobState"] == "PENDING"
                    and job.get("TresPerJob") == "gres:gpu:1"]
    process.send_signal(signal.SIGINT)  # Snakemake cancels its jobs
    output = finish(process, tmp_path, timeout=300)
    assert runs == 80 and len(gpu_jobs) == runs, output[-4000:]
    assert {rule_of(job) for job in gpu_jobs} == {"train"}
    assert {(job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) for job in gpu_jobs} == {("8", "32000M", "12:00:00")}
