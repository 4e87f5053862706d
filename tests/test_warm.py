"""Warm start: jobs handed to a forked child of a server that has the heavy imports done."""

import os
import signal
import subprocess
import sys
import time

import pytest

from slams import warm

JOB = """
import os, sys, time, types
if "snakemake" not in globals():  # as Snakemake's preamble would define it
    snakemake = types.SimpleNamespace(
        config={"resources": {"warm_start": True}}, output=sys.argv[1], action=sys.argv[2]
    )
from slams.warm import delegate

delegate(snakemake)
where = "warm child" if os.environ.get("SLAMS_WARM_CHILD") == "1" else "own process"
print(f"ran in {where}", flush=True)
if snakemake.action == "fail":
    raise ValueError("a one-line reason")
if snakemake.action == "sleep":
    with open(snakemake.output, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(60)
with open(snakemake.output, "w") as out:
    out.write(f"{os.getpid()} {os.getcwd()} {os.environ.get('JOB_VARIABLE')}")
"""


@pytest.fixture
def job(tmp_path):
    """Run the job script as Snakemake would, with its own temporary directory for sockets."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "TMPDIR": str(tmp_path), "SLAMS_WARM_IDLE": "3", "JOB_VARIABLE": "x"}
    for name in (*warm.BATCH_SYSTEM_VARIABLES, warm.CHILD_MARKER):
        env.pop(name, None)

    def run(output, action="write", **kwargs):
        return subprocess.run(
            [sys.executable, str(script), str(output), action],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180, **kwargs,
        )  # fmt: skip

    run.env, run.script = env, script
    return run


def sockets(tmp_path):
    return list(tmp_path.glob("slams-warm-*.sock"))


def test_jobs_run_in_a_warm_child_with_their_own_output_and_environment(job, tmp_path):
    first = job(tmp_path / "one.txt")
    assert first.returncode == 0, first.stderr
    assert "ran in warm child" in first.stdout  # the child writes to the job's own stdout
    pid, cwd, variable = (tmp_path / "one.txt").read_text().split()
    assert cwd == str(tmp_path) and variable == "x"
    assert len(sockets(tmp_path)) == 1  # the server stays for the next job
    second = job(tmp_path / "two.txt")
    assert second.returncode == 0 and "ran in warm child" in second.stdout
    assert (tmp_path / "two.txt").read_text().split()[0] != pid  # a fresh child per job
    deadline = time.monotonic() + 30  # idle for 3 s: the server ends and removes its socket
    while sockets(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not sockets(tmp_path)


def test_a_failing_job_fails_with_its_error(job, tmp_path):
    result = job(tmp_path / "out.txt", "fail")
    assert result.returncode == 1
    assert "job failed in its warm process: ValueError: a one-line reason" in result.stderr
    assert "Traceback" in result.stderr  # the child's traceback reaches the job's stderr


def test_a_killed_job_takes_its_child_with_it(job, tmp_path):
    output = tmp_path / "pid.txt"
    client = subprocess.Popen(
        [sys.executable, str(job.script), str(output), "sleep"],
        env=job.env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not output.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(output.read_text())
    assert child != client.pid
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the warm child outlived its job")


def test_warm_start_is_off_where_asked_and_in_batch_jobs(job, tmp_path):
    assert warm.enabled("auto", {}) and warm.enabled(True, {"SLURM_JOB_ID": "1"})
    assert not warm.enabled("auto", {"SLURM_JOB_ID": "1"})
    assert not warm.enabled(False, {}) and not warm.enabled(True, {warm.CHILD_MARKER: "1"})
    with pytest.raises(ValueError, match="warm_start must be"):
        warm.enabled("sometimes", {})
    job.env["SLURM_JOB_ID"] = "7"
    job.env.pop("SLAMS_WARM_IDLE")
    script = job.script.read_text().replace('"warm_start": True', '"warm_start": "auto"')
    job.script.write_text(script)
    result = job(tmp_path / "out.txt")
    assert result.returncode == 0 and "ran in own process" in result.stdout
    assert not sockets(tmp_path)
