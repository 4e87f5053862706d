"""A single-node Slurm cluster on this machine, for the tests and by hand.

Debian's `slurm-wlm` and `munge` (installed with apt where they are missing and we are root):
munged with a key of its own on munge's default socket (or the munged already serving it),
slurmctld and slurmd on 127.0.0.1 and ports of their own, every file under one folder. The
cluster has

- two partitions, `cpu` (the default) and `gpu`, on one node;
- a GRES `gpu` of 4 without hardware (`File=/dev/null,/dev/zero,...`: Slurm still binds each
  job to its GPUs and sets CUDA_VISIBLE_DEVICES);
- more CPUs and memory declared than the machine has (`SlurmdParameters=config_overrides`),
  so that jobs are scheduled as on a GPU node, not as the 2-core machine allows;
- `proctrack/linuxproc` and `task/none` (sandboxes have no cgroups), no accounting database
  (so `sacct` knows nothing, as on clusters without slurmdbd), `MinJobAge` long enough for
  `squeue` and `scontrol` to see finished jobs.

By hand:

    python tests/cluster/harness.py start /tmp/slurm   # prints the SLURM_CONF to export
    python tests/cluster/harness.py stop /tmp/slurm
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun", "munge", "unmunge")
PACKAGES = ("slurm-wlm", "munge")
# what a Slurm command reads when SLURM_CONF is unset: the system file, else slurmd's cache
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONFIGLESS_LINK = Path("/run/slurm/conf")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
CLUSTER = "slamstest"
GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
# a field name of `scontrol show job -o` (JobId, TresPerJob, AllocNode:Sid, Socks/Node, JOB_GRES)
KEY = re.compile(r"[A-Z][A-Za-z0-9_:/]*")


class ClusterUnavailable(RuntimeError):
    """The harness cannot run here (not Linux, not root, no packages): tests skip with this."""


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _binary(name) is None]


def ensure_installed(timeout_s: float = 300) -> None:
    """Install Debian's slurm-wlm and munge if a daemon or client is missing.

    Raises ClusterUnavailable with the reason where that cannot be done.
    """
    if not sys.platform.startswith("linux"):
        raise ClusterUnavailable("a Slurm cluster needs Linux")
    if not missing_binaries():
        if os.geteuid() != 0:
            raise ClusterUnavailable("the daemons (slurmd runs jobs as any user) need root")
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"{', '.join(missing_binaries())} missing, and not root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing_binaries())} missing, and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    deadline = time.monotonic() + timeout_s
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True,
                              timeout=timeout_s)  # fmt: skip
        if done.returncode != 0:  # the package lists may be missing or stale
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
            done = subprocess.run(install, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} ran past "
                                 f"{timeout_s:.0f} s") from None  # fmt: skip
    if done.returncode != 0 or missing_binaries():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {last}")


def _munge_answers() -> bool:
    """Whether a munged serves the default socket (this harness's, or the system's)."""
    if not MUNGE_SOCKET.exists():
        return False
    done = subprocess.run(f"{_binary('munge')} -n | {_binary('unmunge')}", shell=True,
                          capture_output=True, timeout=20)  # fmt: skip
    return done.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """One node (`slams-node`), partitions `cpu` and `gpu`, all files under `directory`."""

    directory: Path
    cpus: int = 8
    memory_mb: int = 32000
    gpus: int = 4
    min_job_age_s: int = 3600
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    node = "slams-node"

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a Slurm client (sbatch, squeue, Snakemake) of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        d = self.directory
        for sub in ("state", "spool"):  # a cluster of before leaves its jobs there
            shutil.rmtree(d / sub, ignore_errors=True)
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o711)  # clients reach the socket; munged wants no group write
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        hostname = socket.gethostname()
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER}",
                    f"SlurmctldHost={hostname}(127.0.0.1)",
                    f"SlurmctldPort={self.ctld_port}",
                    f"SlurmdPort={self.slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU_Memory",
                    "GresTypes=gpu",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SlurmdParameters=config_overrides",
                    "DefMemPerCPU=1000",  # a job without --mem does not take the whole node
                    "ReturnToService=2",
                    f"MinJobAge={self.min_job_age_s}",
                    "KillWait=5",
                    "SchedulerParameters=sched_interval=2,bf_interval=2",
                    "MpiDefault=none",
                    # the jobs' own srun (Snakemake's jobstep executor drops SLURM_CONF from
                    # their environment) finds the config as on a configless cluster: slurmd
                    # fetches it from slurmctld and links it at /run/slurm/conf
                    "SlurmctldParameters=enable_configless",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={hostname} "
                    f"CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} "
                    "State=UNKNOWN",
                    f"PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    f"PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # Slurm binds a GPU to a device file: distinct character devices that every machine has
        files = ",".join(GPU_FILES[: self.gpus])
        (d / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={files}\n")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.directory / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            [_binary(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        ensure_installed()
        if SYSTEM_CONF.exists():
            raise ClusterUnavailable(f"{SYSTEM_CONF} exists: jobs would read that cluster's "
                                     "configuration, not the harness's")  # fmt: skip
        if CONFIGLESS_LINK.exists():
            raise ClusterUnavailable(f"{CONFIGLESS_LINK} exists: another slurmd runs here "
                                     f"({os.path.realpath(CONFIGLESS_LINK)})")  # fmt: skip
        self._write_config()
        d = self.directory
        m = d / "munge"
        # slurmd fetches its configuration before it can read a socket from it: the default one
        if not _munge_answers():
            MUNGE_SOCKET.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._spawn("munged", "--foreground", "--force", f"--socket={MUNGE_SOCKET}",
                        f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                        f"--seed-file={m / 'munged.seed'}",
                        f"--log-file={d / 'log' / 'munged.log'}")  # fmt: skip
            self._wait(_munge_answers, timeout_s, "munged")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))  # -c: no jobs of before
        self._spawn("slurmd", "-D", "-N", self.node, "--conf-server",
                    f"127.0.0.1:{self.ctld_port}")  # fmt: skip
        self._wait(lambda: self.node_state() == "idle", timeout_s, "the node to come up idle")
        return self

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                self.stop()
                raise ClusterUnavailable(f"{dead[0]} exited at start: {self._tail(dead[0])}")
            if ready():
                return
            time.sleep(0.5)
        tails = "; ".join(f"{n}: {self._tail(n)}" for n in self.processes)
        self.stop()
        raise ClusterUnavailable(f"no Slurm cluster after {timeout_s:.0f} s waiting for {what} "
                                 f"({tails})")  # fmt: skip

    def _tail(self, name: str) -> str:
        for path in (self.directory / "log" / f"{name}.log",
                     self.directory / "log" / f"{name}.out"):  # fmt: skip
            if path.exists() and path.read_text().strip():
                return path.read_text().strip().splitlines()[-1]
        return "no output"

    def node_state(self) -> str:
        done = subprocess.run([_binary("sinfo"), "-h", "-n", self.node, "-o", "%T"],
                              env=self.env, capture_output=True, text=True, timeout=20)  # fmt: skip
        return done.stdout.split()[0].rstrip("*") if done.stdout.split() else ""

    def jobs(self, active: bool = False) -> list[dict[str, str]]:
        """Every job the controller remembers (MinJobAge), as scontrol's key=value fields;
        only the pending and running ones where `active`."""
        done = subprocess.run([_binary("scontrol"), "show", "job", "-o", "--details"],
                              env=self.env, capture_output=True, text=True, timeout=30)  # fmt: skip
        jobs = []
        for line in done.stdout.splitlines():
            if "JobId=" not in line:
                continue
            fields, key = {}, None
            # values may hold spaces (Command, Comment of a group): split on " Key=" only
            for token in line.split(" "):
                name, eq, value = token.partition("=")
                if eq and KEY.fullmatch(name):
                    key = name
                    fields[key] = value
                elif key is not None:
                    fields[key] += " " + token
            jobs.append(fields)
        if active:
            return [j for j in jobs if j.get("JobState") in ("PENDING", "RUNNING", "COMPLETING")]
        return jobs

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this harness started (and only them), and
        any job step (slurmstepd) of this cluster that outlived them."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run([_binary("scancel"), "--full", "--user=root"], env=self.env,
                           capture_output=True, timeout=20)  # fmt: skip
            deadline = time.monotonic() + 20
            while self.jobs(active=True) and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        _kill_job_steps(self.directory)
        _remove_configless_link(self.directory)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_job_steps(directory: Path) -> None:
    """Kill what is left of this cluster's jobs: slurmstepd processes holding its files, and
    the jobs' own processes (their environment names its node and cluster)."""
    ours = str(directory) + os.sep
    marks = (
        f"SLURMD_NODENAME={SlurmCluster.node}".encode(),
        f"SLURM_CLUSTER_NAME={CLUSTER}".encode(),
    )
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                held = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
                doomed = any(path.startswith(ours) for path in held)
            else:
                environ = (proc / "environ").read_bytes().split(b"\0")
                doomed = all(mark in environ for mark in marks)
        except OSError:
            continue
        if doomed:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _remove_configless_link(directory: Path) -> None:
    """slurmd's link to its configuration cache, if it points into this cluster's folder."""
    if CONFIGLESS_LINK.is_symlink() and directory in Path(os.readlink(CONFIGLESS_LINK)).parents:
        CONFIGLESS_LINK.unlink()


def _pids_of(directory: Path) -> list[int]:
    files = (directory / "munge" / "munged.pid", directory / "slurmctld.pid",
             directory / "slurmd.pid")  # fmt: skip
    return [int(f.read_text()) for f in files if f.exists() and f.read_text().strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__.split("By hand:")[1].strip(), file=sys.stderr)
        return 2
    directory = Path(argv[1]).resolve()
    if argv[0] == "start":
        try:
            cluster = SlurmCluster(directory).start()
        except ClusterUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        # the daemons outlive this command (their own sessions); `stop` ends them by pid file
        cluster.processes.clear()
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    for pid in _pids_of(directory):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _kill_job_steps(directory)
    _remove_configless_link(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
