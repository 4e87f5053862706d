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
