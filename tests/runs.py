"""Snakemake as the tests run it: a subprocess on the project's Snakefile in a folder of its own."""

import os
import subprocess
import sys
from pathlib import Path

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(root: Path, workdir: Path, *args: str, check: bool = True, env: dict | None = None,
              timeout: float = 900):  # fmt: skip
    cmd = [*SNAKEMAKE, "-s", str(root / "Snakefile"), "--directory", str(workdir), *args]
    # the jobs' warm-start server (slams.warm) ends soon after the test's last job
    env = {**(env or os.environ), "SLAMS_WARM_IDLE": "10"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                            env=env)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    """The job-count table of a Snakemake run or dry run: rule -> jobs."""
    counts, inside = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts:
                break
    return counts
