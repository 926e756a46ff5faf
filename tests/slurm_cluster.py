"""A throwaway single-node SLURM cluster on localhost, from Debian's packages, for the tests.

Everything lives in one temporary folder (configuration, munge key and socket, state, logs) and
the daemons run in the foreground as children of the test, so :meth:`SlurmCluster.stop` ends
exactly them. No accounting database: job states come from ``squeue``, which keeps finished
jobs for ``MinJobAge`` seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
# the programs the cluster needs, and the Debian package of each
PROGRAMS = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "squeue": "slurm-client",
    "sinfo": "slurm-client",
    "scancel": "slurm-client",
}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
MIN_JOB_AGE = 3600  # seconds squeue shows finished jobs: the whole test session


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


def _which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def install(timeout: float = 300) -> None:
    """Install Debian's munge and SLURM packages with apt-get where a program is missing."""
    missing = sorted({pkg for prog, pkg in PROGRAMS.items() if _which(prog) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM packages {missing} are missing and we are not root")
    if _which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM packages {missing} are missing and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    for cmd in (install_cmd, ["apt-get", "update", "-q"], install_cmd):
        try:
            result = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"{' '.join(cmd)} took over {timeout:.0f} s") from None
        if cmd is install_cmd and result.returncode == 0:
            return
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
    raise ClusterUnavailable(f"{' '.join(install_cmd)} failed ({result.returncode}):\n{tail}")


def node_hardware() -> dict[str, str]:
    """``slurmd -C``'s view of this machine: NodeName, CPUs, ..., RealMemory."""
    out = subprocess.run(
        [_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=False
    )
    fields = dict(
        item.split("=", 1) for item in out.stdout.split("\n", 1)[0].split() if "=" in item
    )
    if out.returncode != 0 or not {"NodeName", "CPUs", "RealMemory"} <= fields.keys():
        raise ClusterUnavailable(f"slurmd -C failed ({out.returncode}): {out.stdout}{out.stderr}")
    return fields


def _free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports nobody listens on now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    """munged + slurmctld + slurmd with one node (this machine, with one fake GPU) and one
    partition. ``env`` is the environment for SLURM's client commands and for Snakemake."""

    def __init__(self, partition: str = "histotest"):
        self.partition = partition
        self.hardware = node_hardware()
        self.node = self.hardware["NodeName"]
        self.cpus = int(self.hardware["CPUs"])
        self.memory_mb = int(self.hardware["RealMemory"])
        self.daemons: dict[str, subprocess.Popen] = {}
        self.root = Path(tempfile.mkdtemp(prefix="histo-slurm-"))
        # munged wants every folder on the way to its socket searchable by all
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf)
        # The job step of snakemake-executor-plugin-slurm-jobstep (0.6) runs `srun` with every
        # SLURM_* variable but the job's ids removed, SLURM_CONF too (a real cluster's srun reads
        # /etc/slurm/slurm.conf). This srun, first on the PATH, puts SLURM_CONF back.
        shim = self.root / "bin"
        shim.mkdir()
        srun = f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which("srun")} "$@"\n'
        (shim / "srun").write_text(srun)
        (shim / "srun").chmod(0o755)
        env["PATH"] = os.pathsep.join([str(shim), os.environ.get("PATH", ""), "/usr/sbin"])
        self.env = env

    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(mode=0o755)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        hw = self.hardware
        topology = " ".join(
            f"{k}={hw[k]}"
            for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if k in hw
        )
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(
            f"""\
ClusterName=histotest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
NodeName={self.node} NodeAddr=127.0.0.1 {topology} RealMemory={self.memory_mb} Gres=gpu:1 \
State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        # the GPU is a name only: enough for SLURM to grant `--gpus=1`
        (r / "gres.conf").write_text("Name=gpu File=/dev/null\n")

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.root / f"{name}.stderr", "w") as log:
            self.daemons[name] = subprocess.Popen(
                [_which(name), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def _failure(self, what: str) -> ClusterUnavailable:
        """`what` with the end of each daemon's log (its stderr where it wrote no log)."""
        parts = [what]
        for name, log in (("munged", "munge/munged.log"), ("slurmctld", None), ("slurmd", None)):
            for path in (self.root / (log or f"{name}.log"), self.root / f"{name}.stderr"):
                if path.exists() and path.stat().st_size:
                    parts.append(f"--- {path.name}:\n{_tail(path, 12)}")
                    break
        return ClusterUnavailable("\n".join(parts))

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Start the daemons and wait until the node is idle; ClusterUnavailable otherwise."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("slurmd must run as root to start jobs; we are not root")
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            "--foreground",
            f"--socket={m}/munge.socket",
            f"--key-file={m}/munge.key",
            f"--log-file={m}/munged.log",
            f"--pid-file={m}/munged.pid",
            f"--seed-file={m}/munged.seed",
        )
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged did not start")
        self._spawn("slurmctld", "-D", "-c", "-i")
        self._spawn("slurmd", "-D", "-N", self.node)
        self._wait(lambda: self.node_state() == "idle", timeout, "the node did not become idle")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.daemons.items() if p.poll() is not None]
            if dead:
                raise self._failure(f"{', '.join(dead)} exited: {what}")
            if time.monotonic() > deadline:
                raise self._failure(f"{what} within {timeout:.0f} s (node: {self.node_state()})")
            time.sleep(0.5)

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def node_state(self) -> str:
        try:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10)
        except subprocess.TimeoutExpired:
            return "sinfo timed out"
        return out.stdout.strip() if out.returncode == 0 else out.stderr.strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows, queued, running or finished, as ``{id, name, comment,
        state, memory, cpus, tres, time_limit, start, end}`` (tres: ``gres:gpu:1`` or ``N/A``)."""
        fields = {
            "JobID": "id",
            "Name": "name",
            "Comment": "comment",
            "State": "state",
            "MinMemory": "memory",
            "NumCPUs": "cpus",
            "tres-per-job": "tres",
            "TimeLimit": "time_limit",
            "StartTime": "start",
            "EndTime": "end",
        }
        out = self.run(
            "squeue", "--states=all", "--noheader", "-O", ",".join(f"{f}:|" for f in fields)
        )
        if out.returncode != 0:
            raise RuntimeError(f"squeue failed: {out.stderr}")
        return [
            dict(zip(fields.values(), (v.strip() for v in line.split("|")), strict=False))
            for line in out.stdout.splitlines()
            if line.strip()
        ]

    def stop(self) -> None:
        """Cancel the jobs, end the daemons this object started and delete the folder."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            try:
                self.run("scancel", f"--partition={self.partition}", timeout=10)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    active = self.run("squeue", "-h", "-t", "PD,R,CG", "-o", "%i", timeout=10)
                    if active.returncode != 0 or not active.stdout.strip():
                        break
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
