"""A single-node SLURM cluster on this machine, for the tests that run the workflow through SLURM.

Debian's packages (``apt-get install slurmctld slurmd slurm-client munge``; ``.ci/run`` installs them)
run as root without systemd: :class:`SlurmCluster` starts its own ``munged`` (as the munge user, with a
private key and socket), ``slurmctld`` and ``slurmd -N localhost`` in the foreground, all configured
under one directory (own ports, own munge socket), and stops exactly those three processes. One file
outside it: /etc/slurm/slurm.conf, a link to its configuration while it runs, because the Snakemake
plugin's job step drops ``SLURM_CONF`` from the environment of the ``srun`` it starts (a machine
with a SLURM configuration of its own is refused, not touched).
The node is ``localhost`` at 127.0.0.1, so nothing depends on the host name; it declares the
machine's CPUs and, if asked, fake GPUs (character devices that SLURM allocates and exports as
``CUDA_VISIBLE_DEVICES`` but that no driver serves). Jobs run in partition ``main``; partition ``held``
is down, so what is submitted there waits and shows what a run would ask for without running it.
There is no accounting database: the jobs
stay visible to ``squeue``/``scontrol`` for ``MinJobAge`` (an hour) and every finished job is
written to ``jobcomp.txt`` (``JobCompType=jobcomp/filetxt``)::

    with SlurmCluster(gpus=4) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env, check=True)
        cluster.jobs()            # [{"JobId": "1", "JobState": "COMPLETED", ...}]

``python -m tests.slurm_cluster demo`` runs the embedded demo's main table through
``--profile profiles/slurm`` on such a cluster and prints how long each step took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The programs a cluster needs: the daemons and the client commands the Snakemake plugin calls.
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
#: Where SLURM's commands look for the configuration when ``SLURM_CONF`` is not set.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
#: Major device number of NVIDIA GPUs: the fake GPUs are character devices with it.
_NVIDIA_MAJOR = 195
_MUNGE_USER = "munge"
#: Command-line options for a cluster without an accounting database: job status from squeue (the
#: plugin's default, sacct, fails there and Snakemake would wait forever), first status check after
#: 2 s instead of 40 s, no account.
SLURM_TEST_OPTIONS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                      "--slurm-no-account", "--latency-wait", "5")


def missing_binaries() -> list[str]:
    """The programs of :data:`BINARIES` that are not on the PATH."""
    return [name for name in BINARIES if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(root: Path, cpus: int, memory_mb: int, gpus: int) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
ClusterName=rationality-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge-run' / 'munge.socket'}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root / 'log' / 'jobcomp.txt'}
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=held Nodes=localhost MaxTime=INFINITE State=DOWN
"""


def parse_records(text: str) -> list[dict[str, str]]:
    """``Key=Value`` records, one per line (``scontrol --oneliner`` and jobcomp/filetxt lines).

    Values never contain spaces in the fields the tests read; a value such as ``Command=a b``
    keeps its first word only.
    """
    records = []
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields:
            records.append(fields)
    return records


class SlurmCluster:
    """A single-node SLURM cluster under one directory, started by :meth:`start` (or ``with``).

    Args:
        root: the directory for its configuration, state and logs (made traversable for the munge
            user); a new directory under the system's temporary directory when None, removed by
            :meth:`stop`.
        cpus: CPUs the node declares; the machine's when None.
        memory_mb: memory the node declares (SLURM schedules ``--mem`` against it; nothing
            enforces it).
        gpus: fake GPUs the node declares (``Gres=gpu:N``).
    """

    def __init__(self, root: Path | None = None, cpus: int | None = None, memory_mb: int = 16000,
                 gpus: int = 0) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="rationality-slurm-")) if root is None else Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.gpus = gpus
        self.conf = self.root / "slurm.conf"
        #: The environment for SLURM commands (and Snakemake) to talk to this cluster.
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[subprocess.Popen] = []

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        """Write the configuration and start munged, slurmctld and slurmd; return once the node is idle.

        Raises:
            RuntimeError: not root, a program missing, or the node not up within ``timeout`` seconds
                (with the daemons' log tails).
        """
        if os.geteuid() != 0:
            raise RuntimeError("a SLURM test cluster needs root (slurmd and munged run as system users)")
        if missing_binaries():
            raise RuntimeError(f"SLURM test cluster: {missing_binaries()} not found (apt-get install slurmctld "
                               "slurmd slurm-client munge)")
        self._write_files()
        self._link_system_conf()
        try:
            munge = self.root / "munge"
            self._spawn(["munged", "--foreground", f"--socket={self.root / 'munge-run' / 'munge.socket'}",
                         f"--key-file={munge / 'munge.key'}", f"--seed-file={munge / 'munged.seed'}",
                         f"--log-file={munge / 'munged.log'}", f"--pid-file={self.root / 'munge-run' / 'munged.pid'}"],
                        "munged", user=_MUNGE_USER)
            self._wait_for(lambda: (self.root / "munge-run" / "munge.socket").exists(), timeout, "munged's socket")
            self._spawn(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld")
            self._wait_for(lambda: self._run("scontrol", "ping").returncode == 0, timeout, "slurmctld")
            self._spawn(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], "slurmd")
            self._wait_for(lambda: self._run("sinfo", "-h", "-N", "-p", "main", "-o", "%t").stdout.strip() == "idle", timeout,
                           "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop the daemons this object started (last started first)."""
        if all(daemon.poll() is None for daemon in self._daemons) and len(self._daemons) == 3:
            self._run("scancel", "--user", str(os.geteuid()))
            self._wait_for(lambda: not self._run("squeue", "-h").stdout.strip(), timeout, "cancelled jobs to end",
                           fail=False)
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self._daemons.clear()
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (finished ones for an hour), as ``scontrol show job`` fields;
        with ``--details``, so GPU jobs carry ``JOB_GRES`` (e.g. ``gpu:2``)."""
        result = self._run("scontrol", "show", "job", "--oneliner", "--details")
        return [job for job in parse_records(result.stdout) if "JobId" in job]

    def completed_jobs(self) -> list[dict[str, str]]:
        """slurmctld's permanent record of every finished job (``JobCompLoc``), oldest first."""
        path = self.root / "log" / "jobcomp.txt"
        return parse_records(path.read_text()) if path.exists() else []

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of each daemon's log, for error messages."""
        logs = sorted((self.root / "log").glob("*.log")) + [self.root / "munge" / "munged.log"]
        return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                         for path in logs if path.exists())

    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged, as the munge user, must reach its directories
        for name in ("state", "spool", "log", "dev"):
            (self.root / name).mkdir(exist_ok=True)
        for name, mode in (("munge", 0o700), ("munge-run", 0o755)):  # the key private, the socket reachable
            (self.root / name).mkdir(exist_ok=True)
            shutil.chown(self.root / name, _MUNGE_USER, _MUNGE_USER)
            (self.root / name).chmod(mode)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, _MUNGE_USER, _MUNGE_USER)
        key.chmod(0o400)
        devices = []
        for index in range(self.gpus):
            device = self.root / "dev" / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o600 | 0o020000, os.makedev(_NVIDIA_MAJOR, index))  # a character device
            devices.append(str(device))
        self.conf.write_text(_slurm_conf(self.root, self.cpus, self.memory_mb, self.gpus))
        gres = "".join(f"NodeName=localhost Name=gpu File={device}\n" for device in devices)
        (self.root / "gres.conf").write_text(gres)

    def _link_system_conf(self) -> None:
        """Point /etc/slurm/slurm.conf at this cluster's configuration; replace only a dangling link (one
        left behind by a test cluster whose directory is gone)."""
        if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
            SYSTEM_CONF.unlink()
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            target = f" (a link to {os.readlink(SYSTEM_CONF)})" if SYSTEM_CONF.is_symlink() else ""
            raise RuntimeError(f"SLURM test cluster: {SYSTEM_CONF} exists{target}: this machine has a SLURM "
                               "configuration (or another test cluster runs); refusing to replace it")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)

    def _spawn(self, command: list[str], name: str, user: str | None = None) -> None:
        with (self.root / "log" / f"{name}.out").open("ab") as output:
            self._daemons.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=self.env,
                                                  user=user, group=user, start_new_session=True))

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)

    def _wait_for(self, ready, timeout: float, what: str, fail: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            exited = [d.args[0] for d in self._daemons if d.poll() is not None]
            if exited or time.monotonic() > deadline:
                if not fail:
                    return
                reason = f"{exited} exited" if exited else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"SLURM test cluster: waiting for {what}: {reason}\n{self.log_tails()}")
            time.sleep(0.2)


def _demo(args: argparse.Namespace) -> None:
    """Run the demo's main table through profiles/slurm on a fresh cluster and print the timings."""
    repo = Path(__file__).resolve().parents[1]
    workdir = Path(tempfile.mkdtemp(prefix="rationality-slurm-demo-"))
    load = os.getloadavg()[0]
    started = time.monotonic()
    with SlurmCluster() as cluster:
        up = time.monotonic() - started
        command = ["timeout", "-k", "30", str(args.timeout), "snakemake", "results/tables/pt_ir.csv",
                   "-s", str(repo / "Snakefile"), "--directory", str(workdir), "--profile", str(repo / "profiles" / "slurm"),
                   *SLURM_TEST_OPTIONS]
        started = time.monotonic()
        result = subprocess.run(command, env=cluster.env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            sys.exit(f"snakemake failed ({result.returncode}):\n{result.stderr[-4000:]}")
        states = sorted(job["JobState"] for job in cluster.jobs())
        version = cluster._run("sinfo", "--version").stdout.strip()
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"{version}, one node of {cluster.cpus} CPUs; load average {load:.1f} at the start")
    print(f"cluster up: {up:.1f} s")
    print(f"demo main table through --profile profiles/slurm: {len(states)} SLURM jobs, "
          f"{states.count('COMPLETED')} COMPLETED, in {elapsed:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True)
    demo = commands.add_parser("demo", help="the embedded demo's main table through SLURM, timed")
    demo.add_argument("--timeout", type=int, default=3600, help="seconds before Snakemake is stopped")
    demo.set_defaults(run=_demo)
    arguments = parser.parse_args()
    arguments.run(arguments)
