"""Posterior error of guided sampling against the exact Kalman posterior, by steps and corrections.

On the analytic Gaussian prior of ``slams.diffusion.analytic`` (a 4 x 8 grid, condition number
~200) a truth is observed through a linear A (2 x 2 coarsening, or every 2nd point) with noise of
variance 0.1; each guided ensemble (2000 members, float64, exact prior score) is compared with
the exact posterior. Prints a markdown table: per guidance, steps and corrections, the share of
the prior-to-posterior mean distance closed (1 is perfect) and the spread ratio (1 is perfect),
plus seconds per run. Usage::

    python benchmarks/gaussian_posterior.py [--members 2000] [--steps 16 32 64 128 256 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from slams.diffusion import VPSDE, GaussianGuidance, MomentMatchingGuidance, sample
from slams.diffusion.analytic import F64, GaussianPrior, posterior_agreement
from slams.observe import MeasurementOperator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--corrections", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cg-iterations", type=int, default=3)
    parser.add_argument("--variance", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    sde = VPSDE()
    prior = GaussianPrior(sde=sde)
    operators = {"coarsen-2": MeasurementOperator(coarsen=2), "gap-2": MeasurementOperator(gap=2)}
    print(
        "| A | guidance | steps | corrections | mean gap closed | spread ratio | s/run |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for name, operator in operators.items():
        y = prior.observation(operator, args.variance)
        _, post_mean, post_cov = prior.kalman(operator, y, args.variance)
        guidances = {
            "sda": GaussianGuidance(operator, y, args.variance),
            f"mmps-cg{args.cg_iterations}": MomentMatchingGuidance(
                operator, y, args.variance, cg_iterations=args.cg_iterations
            ),
        }
        for label, guidance in guidances.items():
            for steps in args.steps:
                for corrections in args.corrections:
                    start = time.perf_counter()
                    x = sample(
                        lambda x, t, g=guidance: g.guided_eps(prior.eps, x, t, sde),
                        (args.members, *prior.shape),
                        sde,
                        steps=steps,
                        corrections=corrections,
                        tau=0.5,
                        generator=torch.Generator().manual_seed(0),
                        progress=False,
                        dtype=F64,
                    )
                    seconds = time.perf_counter() - start
                    agreement = posterior_agreement(x, prior.mean, post_mean, post_cov)
                    print(
                        f"| {name} | {label} | {steps} | {corrections} "
                        f"| {agreement['gap_closed']:.3f} | {agreement['spread_ratio']:.3f} "
                        f"| {seconds:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
