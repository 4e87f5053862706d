"""benchmarks/gpu.py projects each timed network at the sampler of the methods sampling with it
(``assimilation.sampler_by_space``)."""

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
gpu = pytest.importorskip("gpu")

from slams.config import load_config  # noqa: E402


def _section(tmp_path, overlay: str) -> dict:
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    return load_config(ROOT / "config.yaml", path)["assimilation"]


def test_each_network_is_projected_at_its_own_sampler(tmp_path):
    args = argparse.Namespace(chosen_steps=None, chosen_corrections=None)
    overlay = """assimilation:
  sampler: {steps: 32, corrections: 1, correction_min_sigma: 0.0, correction_grid_steps: null,
            solver: ddim}
  sampler_by_space:
    pixel: {solver: ddim}
    latent-none: {steps: 16, corrections: 0}
    latent-both: {steps: 64, corrections: 1}
"""
    section = _section(tmp_path, overlay)
    pixel = gpu.chosen(args, section, gpu.NETWORKS["pixel"])
    latent = gpu.chosen(args, section, gpu.NETWORKS["latent"])
    assert pixel == (64, "ddim 32 + 1, 64 calls")
    # the costliest latent network's (latent-both's), not latent-none's 16 + 0 nor the shared
    # sampler of latent-insitu and -exsitu
    assert latent == (128, "ddim 64 + 1, 128 calls")
    # the command line's override holds for every network
    args = argparse.Namespace(chosen_steps=512, chosen_corrections=1)
    assert gpu.chosen(args, section, gpu.NETWORKS["latent"])[0] == 1024
    # corrections on a 16-step grid: 32 steps + 16 corrections
    args = argparse.Namespace(chosen_steps=None, chosen_corrections=None)
    grid = _section(
        tmp_path, overlay.replace("correction_grid_steps: null", "correction_grid_steps: 16")
    )
    assert gpu.chosen(args, grid, gpu.NETWORKS["pixel"]) == (
        48,
        "ddim 32 + 1 (at 16 steps' σ), 48 calls",
    )
    # every method that samples with a network is projected by one of the timed U-Nets
    from slams.methods import METHODS

    projected = {m for methods in gpu.NETWORKS.values() for m in methods}
    assert projected == {m for m, spec in METHODS.items() if spec.space}
