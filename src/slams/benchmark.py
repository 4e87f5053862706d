"""What the benchmark scripts (``benchmarks/``: what the software costs) share.

- :func:`network_sizes`: the state and U-Net of each score network at a preset's size
  (``demo``: ``presets/demo.yaml``; ``paper``: ``config.yaml``);
- :func:`guided_problem` and :func:`time_step`: a U-Net of random weights behind the Markov
  blanket, with SDA and MMPS guidance of block means, and the seconds of one sampler step
  (predictor and one Langevin correction) through it;
- :data:`PROJECTED_NETWORKS` and :func:`costliest_sampler`: which methods' samplers the GPU
  benchmark projects each timed network at.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch

from slams.config import grid_shape, load_config, method_assimilation
from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.diffusion.sampler import network_calls
from slams.models import for_sampling
from slams.nn import ScoreUNet
from slams.observations import MeasurementOperator
from slams.paths import PROJECT_ROOT

# The configs of each preset size: config.yaml, and the overlays over it.
PRESETS = {
    "demo": [PROJECT_ROOT / "config.yaml", PROJECT_ROOT / "presets/demo.yaml"],
    "paper": [PROJECT_ROOT / "config.yaml"],
}
# The timed networks (network_sizes) and the methods whose samplers each one projects: the
# latent U-Net's time at the costliest of the latent networks' samplers.
PROJECTED_NETWORKS = {
    "pixel": ("pixel", "pixel-both"),
    "latent": ("latent-none", "latent-insitu", "latent-exsitu", "latent-both"),
}


def network_sizes(preset: str) -> dict[str, tuple[int, tuple[int, int], dict]]:
    """``{"pixel" | "latent": (channels, (height, width), U-Net config)}`` at the size of
    ``preset`` (:data:`PRESETS`): the temperature levels on the target grid with the
    ``score.pixel`` network; ``autoencoder.latent_channels`` on the (downsampled) grid with the
    ``score.latent`` network."""
    config = load_config(*PRESETS[preset])
    height, width = grid_shape(config["data"]["resolution"])
    factor = config["autoencoder"].get("downsample", 1)
    latent_grid = (height // factor, width // factor)
    return {
        "pixel": (len(config["data"]["levels"]), (height, width), config["score"]["pixel"]),
        "latent": (
            config["autoencoder"]["latent_channels"],
            latent_grid,
            config["score"]["latent"],
        ),
    }


def guided_problem(channels, height, width, network, window, batch, device, compile_net=False):
    """A score U-Net of random weights behind the Markov blanket, the shape of ``batch``
    windows, and SDA and MMPS guidances of 4 x 4 block means of every day (variance 0.1):
    ``(denoiser, (batch, window, channels, height, width), {"sda": ..., "mmps": ...})``."""
    torch.manual_seed(0)
    net = ScoreUNet(window * channels, network["hidden"], network["blocks"])
    net = for_sampling(net.to(device).eval().requires_grad_(False))  # as the workflow samples
    if compile_net:
        # The guidance's vector-Jacobian product keeps the graph (retain_graph=True), which
        # compiled backward graphs refuse with donated buffers.
        from torch._functorch import config as functorch_config

        functorch_config.donated_buffer = False
        net = torch.compile(net)
    denoiser = MarkovBlanketDenoiser(net, window=window)
    operator = MeasurementOperator(coarsen=4)
    y = torch.randn(1, window, channels, height // 4, width // 4, device=device)
    guidances = {
        "sda": GaussianGuidance(operator, y, 0.1),
        "mmps": MomentMatchingGuidance(operator, y, 0.1, iterations=3),
    }
    return denoiser, (batch, window, channels, height, width), guidances


def time_step(eps_fn, shape, device, dtype, repeats: int) -> list[float]:
    """Seconds per sampler step (predictor + 1 correction), measured over 1-step samplings;
    the first entry is the warm-up step."""
    sde = VPSDE()
    times = []
    for i in range(repeats + 1):  # the first run warms up (allocations, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(eps_fn, shape, sde, steps=1, corrections=1, device=device, progress=False,
               dtype=dtype, generator=torch.Generator(device=device).manual_seed(i))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def costliest_sampler(
    section: Mapping,
    methods: Iterable[str],
    steps: int | None = None,
    corrections: int | None = None,
) -> tuple[int, str]:
    """Network calls and name of the costliest sampler of ``methods`` in the assimilation
    section ``section`` (``assimilation.sampler_by_space`` applied); ``steps`` and
    ``corrections``, where given, replace every method's."""
    out = []
    for method in methods:
        sampler = method_assimilation(section, method)["sampler"]
        n = sampler["steps"] if steps is None else steps
        k = sampler["corrections"] if corrections is None else corrections
        min_sigma, grid = sampler["correction_min_sigma"], sampler["correction_grid_steps"]
        calls = network_calls(n, k, min_sigma, grid)
        name = (f"{sampler['solver']} {n} + {k}"
                + (f" (σ ≥ {min_sigma:g})" if k and min_sigma else "")
                + (f" (at {grid} steps' σ)" if k and grid and grid < n else ""))  # fmt: skip
        out.append((calls, f"{name}, {calls} calls"))
    return max(out)
