"""What the guidance saves by a graph through the observed days' windows only.

Under SDA or MMPS the likelihood's cotangent is zero on unobserved days, so the denoiser's
backward pass needs only the Markov-blanket windows that own an observed day
(:meth:`slams.diffusion.MarkovBlanketDenoiser.linearise` with ``days``). This script times one
guided noise prediction of ``--members`` members x ``--days`` days, observed every ``--every``
days (4 x 4 block means, variance 0.1), with a graph through every window (``days`` not given,
the workflow once did) and through the owning windows only, on the same input, and
prints the ratio and the largest difference of the two guided predictions relative to their
scale. Score U-Nets of random weights at the preset's size (the time does not depend on the
weights). Usage::

    python benchmarks/observed_days.py [--preset demo] [--days 10 29] [--every 1 4 8]
        [--members 4] [--chunk 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from slams.benchmark import guided_problem, network_sizes
from slams.diffusion import VPSDE, GaussianGuidance, MomentMatchingGuidance
from slams.observations import MeasurementOperator, observed_days


def seconds(calls, repeats: int) -> list[float]:
    """The median time of each of ``calls`` (functions without arguments) over ``repeats``
    rounds, the calls alternating within a round (so that a slow spell of a shared machine
    hits them alike), after a warm-up round."""
    times = [[] for _ in calls]
    for _ in range(repeats + 1):
        for fn, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent[1:]) for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=["demo", "paper"])
    parser.add_argument("--space", nargs="+", default=["pixel", "latent"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--days", type=int, nargs="+", default=[10, 29])
    parser.add_argument("--every", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mmps-iterations", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="windows per network call")
    args = parser.parse_args()
    torch.set_grad_enabled(False)  # as in the sampler
    sde = VPSDE()
    print(f"{torch.get_num_threads()} threads, {args.members} members, window {args.window}, "
          f"chunks of {args.chunk or 'all'} windows, median of {args.repeats} alternating "
          "calls after a warm-up")  # fmt: skip
    print("| space | days | observed every | windows with a graph | guidance "
          "| all windows (ms) | observed windows (ms) | speed-up | max difference |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for space, (channels, (height, width), network) in network_sizes(args.preset).items():
        if space not in args.space:
            continue
        denoiser, _, _ = guided_problem(channels, height, width, network, args.window, 1, "cpu")
        denoiser.chunk = args.chunk
        for length in args.days:
            for every in args.every:
                local = observed_days(length, every).nonzero().flatten()
                days = local.tolist()
                operator = MeasurementOperator(coarsen=4)
                generator = torch.Generator().manual_seed(0)
                shape = (args.members, length, channels, height, width)
                x = torch.randn(shape, generator=generator)
                y = torch.randn(len(days), channels, height // 4, width // 4, generator=generator)
                t = torch.full((args.members,), 0.5)
                owning = len({denoiser.owner(d, length) for d in days})
                for name, kind, options in (
                    ("sda", GaussianGuidance, {}),
                    ("mmps", MomentMatchingGuidance, {"iterations": args.mmps_iterations}),
                ):

                    def observe(state, local=local, operator=operator):
                        return operator(state[:, local])

                    full = kind(observe, y, 0.1, **options)
                    sparse = kind(observe, y, 0.1, days=days, **options)
                    reference = full.guided_eps(denoiser, x, t, sde)
                    result = sparse.guided_eps(denoiser, x, t, sde)
                    scale = reference.abs().max()
                    difference = float((result - reference).abs().max() / scale)
                    before, after = seconds(
                        [partial(g.guided_eps, denoiser, x, t, sde) for g in (full, sparse)],
                        args.repeats,
                    )
                    print(
                        f"| {space} | {length} | {every} | {owning} of {length - args.window + 1}"
                        f" | {name} | {1000 * before:.0f} | {1000 * after:.0f} "
                        f"| {before / after:.2f} | {difference:.1e} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
