"""slams.benchmark: benchmarks/gpu.py projects each timed network at the sampler of the methods
sampling with it (``assimilation.sampler_by_space``)."""

from slams.benchmark import PROJECTED_NETWORKS, costliest_sampler
from slams.config import load_config
from slams.paths import PROJECT_ROOT, schema_path


def _section(tmp_path, overlay: str) -> dict:
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    return load_config(PROJECT_ROOT / "config.yaml", path, schema_path=schema_path())[
        "assimilation"
    ]


def test_each_network_is_projected_at_its_own_sampler(tmp_path):
    overlay = """assimilation:
  sampler: {steps: 32, corrections: 1, correction_min_sigma: 0.0, correction_grid_steps: null,
            solver: ddim}
  sampler_by_space:
    pixel: {solver: ddim}
    latent-none: {steps: 16, corrections: 0}
    latent-both: {steps: 64, corrections: 1}
"""
    section = _section(tmp_path, overlay)
    pixel = costliest_sampler(section, PROJECTED_NETWORKS["pixel"])
    latent = costliest_sampler(section, PROJECTED_NETWORKS["latent"])
    assert pixel == (64, "ddim 32 + 1, 64 calls")
    # the costliest latent network's (latent-both's), not latent-none's 16 + 0 nor the shared
    # sampler of latent-insitu and -exsitu
    assert latent == (128, "ddim 64 + 1, 128 calls")
    # the command line's override holds for every network
    assert costliest_sampler(section, PROJECTED_NETWORKS["latent"], 512, 1)[0] == 1024
    # corrections on a 16-step grid: 32 steps + 16 corrections
    grid = _section(
        tmp_path, overlay.replace("correction_grid_steps: null", "correction_grid_steps: 16")
    )
    assert costliest_sampler(grid, PROJECTED_NETWORKS["pixel"]) == (
        48,
        "ddim 32 + 1 (at 16 steps' σ), 48 calls",
    )
    # every method that samples with a network is projected by one of the timed U-Nets
    from slams.methods import DIFFUSION_METHODS

    projected = {m for methods in PROJECTED_NETWORKS.values() for m in methods}
    assert projected == set(DIFFUSION_METHODS)
