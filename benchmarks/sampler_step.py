"""Milliseconds per sampler step, unguided and guided (SDA and MMPS), at demo and paper size.

A "step" is what the sampler does per time step with the paper's one Langevin correction:
two evaluations of the (guided) noise prediction. The network batch is ``--batch`` windows of
``K`` days (default 8), i.e. 8 members of a K-day trajectory; a full step over ``M`` members of
an ``L``-day trajectory costs ``M (L - K + 1) / batch`` times the figure printed here (the
Markov-blanket windows of all members go through the network as one batch).

Sizes come from the configs (:func:`slams.benchmark.network_sizes`): pixel = the temperature
levels on the target grid with the ``score.pixel`` network; latent =
``autoencoder.latent_channels`` on the (downsampled) grid with the ``score.latent`` network.
The observation is A = 4x4 block means on every day.
``--compile`` wraps the U-Net in ``torch.compile`` (inductor); the "first step" column is the
warm-up step, which then includes the compilation of the forward and backward graphs. Usage::

    python benchmarks/sampler_step.py --preset demo paper [--device cpu|cuda] [--dtype bf16]
        [--compile]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from slams.benchmark import PRESETS, guided_problem, network_sizes, time_step
from slams.diffusion import VPSDE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["demo", "paper"], choices=list(PRESETS))
    parser.add_argument("--space", nargs="+", default=["pixel", "latent"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--guidance", nargs="+", default=["none", "sda", "mmps"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = args.dtype == "bf16"
    compiled = ", torch.compile" if args.compile else ""
    print(f"device {device} ({torch.get_num_threads()} threads), {args.dtype}{compiled}, "
          f"batch {args.batch}")  # fmt: skip
    print("| preset | space | state (C x H x W) | guidance | ms/step | min | max "
          "| first step (s) |")  # fmt: skip
    print("|---|---|---|---|---:|---:|---:|---:|")
    for preset in args.preset:
        for space, (channels, (height, width), network) in network_sizes(preset).items():
            if space not in args.space:
                continue
            denoiser, shape, problems = guided_problem(
                channels, height, width, network, args.window, args.batch, device, args.compile
            )

            def run(x, t, guidance=None, denoiser=denoiser):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    if guidance is None:
                        return denoiser(x, t).float()
                    return guidance.guided_eps(lambda x, t: denoiser(x, t).float(), x, t, VPSDE())

            guidances = {"none": None, **problems}
            for name in args.guidance:
                seconds = time_step(
                    lambda x, t, g=guidances[name]: run(x, t, g),
                    shape,
                    device,
                    torch.float32,
                    args.repeats,
                )
                ms = [1000 * s for s in seconds[1:]]
                print(
                    f"| {preset} | {space} | {channels} x {height} x {width} | {name} "
                    f"| {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} "
                    f"| {seconds[0]:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
