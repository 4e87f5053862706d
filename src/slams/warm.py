"""Warm start: the workflow's jobs run in processes forked from one that has imported them.

Every job of the workflow is a new Python process that first imports PyTorch, xarray and
matplotlib: ~4 s per job on the development machine, more than the work of many of them (the
demo's ~130 jobs spent ~6 of their ~30 CPU minutes importing). With warm start, a job's script
hands itself to a server process on the same machine that holds those modules imported and
forks a ready child for it; the child runs the very same script, with the same ``snakemake``
object, working directory and environment, writes the same outputs and logs, and reports its
exit status back; the job's own process only waits. Each cell of the workflow stays its own
Snakemake job and output file.

- The server starts with the first job that asks for it (``python -m slams.warm serve``),
  listens on a Unix socket of this user named after a hash of the Python executable and of
  the installed ``slams`` sources, so that changed code never runs in an old server, and exits
  after :data:`IDLE_SECONDS` without a job.
- A child that loses its job (Snakemake killed it) is killed too.
- Anything that keeps the server from taking the job (no ``fork``, a socket that cannot be
  created) runs the job in its own process, as without warm start.
- ``resources.warm_start`` (``auto``, ``true``, ``false``): ``auto`` uses it except inside a
  batch-system job (Slurm, PBS, LSF, SGE), where a server left behind by one job would be
  killed with that job's allocation, taking other jobs' children with it.

The standard library only: this module is imported before anything heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_SECONDS = float(os.environ.get("SLAMS_WARM_IDLE", 120))
START_TIMEOUT_SECONDS = 120
CHILD_MARKER = "SLAMS_WARM_CHILD"
BATCH_SYSTEM_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")
# What the server imports before it forks: the heavy modules every job of the workflow uses.
PRELOAD = (
    "numpy",
    "pandas",
    "xarray",
    "netCDF4",
    "torch",
    # imported by torch.autograd.grad on its first call with grad_outputs (and with it sympy):
    # ~0.5 s of every guided assimilation job otherwise
    "torch.fx.experimental.symbolic_shapes",
    "snakemake.script",
    "slams.assimilation",
    "slams.methods.latent",
    "slams.methods.oi",
    "slams.methods.pixel",
    "slams.methods.climatology",
    "slams.train",
    "slams.evaluate",
    "slams.figures.build",  # and slams.figures.draw, which selects matplotlib's Agg backend
)


def enabled(setting: bool | str, environ: dict | None = None) -> bool:
    """Whether a job should use warm start: ``True``, ``False``, or ``"auto"`` (on outside
    batch-system jobs). Never inside a warm child itself."""
    environ = os.environ if environ is None else environ
    if environ.get(CHILD_MARKER) == "1" or setting is False:
        return False
    if setting is True:
        return True
    if setting != "auto":
        raise ValueError(f"warm_start must be auto, true or false, got {setting!r}")
    return not any(name in environ for name in BATCH_SYSTEM_VARIABLES)


def source_key() -> str:
    """A hash of the Python executable and of every ``slams`` source file (path, size, mtime):
    a server only ever runs the code it was started with."""
    digest = hashlib.sha256(sys.executable.encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def socket_path(key: str | None = None) -> Path:
    """The server's Unix socket for this user and code (short: sockets allow ~100 bytes)."""
    key = source_key() if key is None else key
    return Path(tempfile.gettempdir()) / f"slams-warm-{os.getuid()}-{key}.sock"


# --------------------------------------------------------------------------- wire format


def _send(connection: socket.socket, obj) -> None:
    data = pickle.dumps(obj)
    connection.sendall(struct.pack("!Q", len(data)) + data)


def _receive(connection: socket.socket):
    header = _receive_exactly(connection, 8)
    return pickle.loads(_receive_exactly(connection, struct.unpack("!Q", header)[0]))


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, missing = [], size
    while missing:
        chunk = connection.recv(min(missing, 1 << 20))
        if not chunk:
            raise ConnectionError("the warm-start connection closed")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- client


def delegate(smk, script: str | None = None) -> None:
    """Run the calling workflow script in a warm child, then end this process with its status.

    Call it first thing in a script, with the ``snakemake`` object. It returns at once (and the
    script goes on in this process) in a warm child, when warm start is off
    (``resources.warm_start``), or when no server can be reached or started.
    """
    if not enabled(smk.config.get("resources", {}).get("warm_start", "auto")):
        return
    script = script or sys.modules["__main__"].__dict__.get("__file__")
    if not script:
        return
    try:
        connection = _connect(socket_path())
    except OSError as error:
        print(f"warm start unavailable ({error}); running in this process", file=sys.stderr)
        return
    with connection:
        # the child writes to this job's own stdout and stderr (Snakemake's console and logs)
        socket.send_fds(connection, [b"fds"], [sys.stdout.fileno(), sys.stderr.fileno()])
        _send(
            connection,
            {
                "script": str(script),
                "snakemake": pickle.dumps(smk),
                "cwd": os.getcwd(),
                "environ": dict(os.environ),
            },
        )
        try:
            reply = _receive(connection)
        except ConnectionError:
            reply = {"status": 1, "error": "the warm-start server ended before the job"}
    if reply["status"] != 0:
        print(f"job failed in its warm process: {reply['error']}", file=sys.stderr)
    sys.exit(reply["status"])


def _connect(path: Path) -> socket.socket:
    """A connection to the server at ``path``, starting one if none answers."""
    try:
        return _open(path)
    except OSError:
        pass
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one job starts the server, the others wait for it
        try:
            return _open(path)
        except OSError:
            pass
        with open(path.with_suffix(".log"), "ab") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "slams.warm", "serve", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # it outlives this job, and Ctrl-C of this one
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                return _open(path)
            except OSError:
                if server.poll() is not None:
                    raise OSError(
                        f"the warm-start server exited ({path.with_suffix('.log')})"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _open(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        raise
    return connection


# --------------------------------------------------------------------------- server


def serve(path: str | Path, idle: float = IDLE_SECONDS) -> None:
    """Import :data:`PRELOAD`, then fork a child per job request until ``idle`` seconds pass
    with neither a request nor a running child."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    path = Path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    previous = os.umask(0o177)  # this user's socket only
    try:
        listener.bind(str(path))
    finally:
        os.umask(previous)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    killed: set[int] = set()
    last_activity = time.monotonic()
    try:
        while True:
            for pid in list(children):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    children.pop(pid).close()
                    killed.discard(pid)
                    last_activity = time.monotonic()
            if not children and time.monotonic() - last_activity > idle:
                return
            watched = [listener, *(c for p, c in children.items() if p not in killed)]
            readable, _, _ = select.select(watched, [], [], 1.0)
            for ready in readable:
                if ready is listener:
                    connection, _ = listener.accept()
                    pid = _fork_job(connection, listener)
                    if pid:
                        children[pid] = connection
                    last_activity = time.monotonic()
                else:
                    # a job's connection became readable: its client is gone (killed by
                    # Snakemake, or done after the child's reply): the child must end too
                    pid = next(p for p, c in children.items() if c is ready)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    killed.add(pid)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fork_job(connection: socket.socket, listener: socket.socket) -> int:
    """Fork a child that runs the job of ``connection``; returns its pid (0: none forked)."""
    try:
        _, fds, _, _ = socket.recv_fds(connection, 16, 2)
        request = _receive(connection)
    except (OSError, pickle.UnpicklingError, EOFError):
        connection.close()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    status, error = 1, "unknown error"
    try:
        listener.close()
        for target, fd in zip((1, 2), fds, strict=False):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environ"])
        os.environ[CHILD_MARKER] = "1"
        smk = pickle.loads(request["snakemake"])
        sys.argv = [request["script"]]
        runpy.run_path(request["script"], init_globals={"snakemake": smk}, run_name="__main__")
        status, error = 0, ""
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        status, error = code, "" if code == 0 else f"exit status {code}"
    except BaseException as exception:  # reported to the job, which fails with it
        status, error = 1, f"{type(exception).__name__}: {exception}"
        sys.excepthook(type(exception), exception, exception.__traceback__)
    finally:
        workflow = sys.modules.get("slams.workflow")  # the job's last log line, as at exit
        if workflow is not None:
            with contextlib.suppress(Exception):
                workflow.log_resources()
        with contextlib.suppress(OSError):
            _send(connection, {"status": status, "error": error})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "serve":
        serve(argv[1])
    else:
        raise SystemExit("usage: python -m slams.warm serve SOCKET")


if __name__ == "__main__":
    main()
