from pathlib import Path

import pytest
import torch

# The tests' tensors are tiny: one thread is fastest, and it cannot be starved by other jobs on
# a shared machine (an OpenMP team with a descheduled thread slows small ops tenfold).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The whole smoke preset run once by the local executor (`--cores 2`): the folder it ran
    in. The smoke-DAG test checks its outputs; the Slurm test compares its own scores to them."""
    from runs import snakemake

    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(ROOT, workdir, "--cores", "2", "--configfile", str(ROOT / "presets/smoke.yaml"))
    return workdir
