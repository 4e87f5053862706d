"""Posterior error of guided sampling against the exact Kalman posterior, by steps and corrections.

On the analytic Gaussian prior of ``slams.diffusion.analytic`` (a 4 x 8 grid, condition number
~200) a truth is observed through a linear A (2 x 2 coarsening, or every 2nd point) with noise of
variance 0.1; each guided ensemble (2000 members, float64, exact prior score) is compared with
the exact posterior. Prints a markdown table: per guidance, steps and corrections, the share of
the prior-to-posterior mean distance closed (1 is perfect) and the spread ratio (1 is perfect),
plus seconds per run.

``--case trajectory`` does the same for a whole trajectory, as the workflow samples it: a
12-day AR(1)-in-time (a = 0.8), smooth-in-space prior on a 4 x 8 grid whose exact window
scores (``--window`` days, default 3; the workflow's is 5) are composed by
``MarkovBlanketDenoiser``, observed on days 2, 5, 6 and 9 through 2 x 2 block means with one
block in four masked and a different error variance (0.05-0.3) at every point
(``GaussianTrajectory.observation_case``); a first row gives the floor: as many exact
posterior samples. Usage::

    python benchmarks/gaussian_posterior.py [--case state|trajectory] [--members 2000]
        [--steps 16 32 64 128 256 512] [--corrections 0 1 2] [--window 3]
        [--guidance sda mmps] [--solver ddim] [--tau 0.5] [--tau-reference-steps N]
        [--correction-min-sigma 0] [--correction-grid-steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.diffusion.analytic import F64, GaussianPrior, GaussianTrajectory, posterior_agreement
from slams.observe import MeasurementOperator
from slams.sampling import SamplerSettings


def timed_sample(eps_fn, shape, steps: int, corrections: int, args=None):
    """One float64 ensemble and the seconds it took. ``args``: the sampler options (``--tau``,
    ``--tau-reference-steps``, ``--solver``, ``--correction-min-sigma``,
    ``--correction-grid-steps``, ``--seed``); without, tau 0.5 per step, DDIM, corrections at
    every noise level, seed 0."""
    options = {} if args is None else {
        "tau": args.tau, "solver": args.solver, "tau_reference_steps": args.tau_reference_steps,
        "correction_min_sigma": args.correction_min_sigma,
        "correction_grid_steps": getattr(args, "correction_grid_steps", None),
    }  # fmt: skip
    settings = SamplerSettings(steps=steps, corrections=corrections, **{"tau": 0.5, **options})
    seed = getattr(args, "seed", 0)
    start = time.perf_counter()
    x = sample(eps_fn, shape, VPSDE(), **settings.sample_options(),
               generator=torch.Generator().manual_seed(seed), progress=False,
               dtype=F64)  # fmt: skip
    return x, time.perf_counter() - start


class TrajectoryProblem:
    """The trajectory case (module docstring) with ``window``-day blanket windows: the guided
    noise predictions, the exact posterior and the floor that ``members`` exact posterior
    samples reach (seed 0)."""

    def __init__(self, window: int = 5, members: int = 2000, cg_iterations: int = 3):
        self.sde = sde = VPSDE()
        self.prior = prior = GaussianTrajectory(length=12, height=4, width=8, sde=sde)
        self.case = case = prior.observation_case()
        local = case.observed.nonzero().flatten()

        def observe(x):
            return case.operator(x[:, local]).flatten(1)

        y, mask = case.y.flatten().double(), case.mask.flatten()
        variance = case.variance.flatten().double()
        self.denoiser = MarkovBlanketDenoiser(prior.window_net(window), window=window)
        self.members, self.window = members, window
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(members, prior.dim, dtype=F64, generator=generator)
        exact = case.mean + noise @ torch.linalg.cholesky(case.cov).T
        self.floor = self.agreement(exact)
        self.guidances = {
            "sda": GaussianGuidance(observe, y, variance, mask),
            f"mmps-cg{cg_iterations}": MomentMatchingGuidance(
                observe, y, variance, mask, cg_iterations=cg_iterations
            ),
        }

    @property
    def shape(self) -> tuple:
        return (self.members, self.prior.length, *self.prior.state)

    def eps_fn(self, label: str = "sda"):
        guidance = self.guidances[label]
        return lambda x, t: guidance.guided_eps(self.denoiser, x, t, self.sde)

    def agreement(self, samples: Tensor) -> dict:
        flat = samples.reshape(len(samples), -1)
        return posterior_agreement(flat, torch.zeros_like(self.case.mean), self.case.mean,
                                   self.case.cov)  # fmt: skip


def trajectory_rows(args) -> None:
    """The table for the trajectory case (see the module docstring)."""
    problem = TrajectoryProblem(args.window, args.members, args.cg_iterations)
    floor = problem.floor
    print(
        f"| trajectory, window {args.window} | exact samples (floor) | – | – "
        f"| {floor['gap_closed']:.3f} | {floor['spread_ratio']:.3f} | – |",
        flush=True,
    )
    for label in problem.guidances:
        if label.split("-")[0] not in args.guidance:
            continue
        for steps in args.steps:
            for corrections in args.corrections:
                x, seconds = timed_sample(problem.eps_fn(label), problem.shape, steps,
                                          corrections, args)  # fmt: skip
                agreement = problem.agreement(x)
                print(
                    f"| trajectory, window {args.window} | {label} | {steps} | {corrections} "
                    f"| {agreement['gap_closed']:.3f} | {agreement['spread_ratio']:.3f} "
                    f"| {seconds:.1f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--corrections", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cg-iterations", type=int, default=3)
    parser.add_argument("--variance", type=float, default=0.1)
    parser.add_argument("--case", choices=["state", "trajectory"], default="state")
    parser.add_argument(
        "--window", type=int, default=3, help="days per blanket window (trajectory case)"
    )
    parser.add_argument("--guidance", nargs="+", default=["sda", "mmps"], help="sda and/or mmps")
    parser.add_argument("--solver", default="ddim", choices=["ddim", "dpm2m"])
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--tau-reference-steps", type=int, default=None,
                        help="Langevin step tau x this / steps (default: per step)")  # fmt: skip
    parser.add_argument("--correction-min-sigma", type=float, default=0.0)
    parser.add_argument("--correction-grid-steps", type=int, default=None,
                        help="corrections only at the times of an N-step grid")  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="the sampler's noise (the floor's exact samples: 0)"
    )
    args = parser.parse_args()
    print(f"solver {args.solver}, tau {args.tau:g}"
          + (f" x {args.tau_reference_steps} / steps" if args.tau_reference_steps else " per step")
          + (f", corrections where sigma >= {args.correction_min_sigma:g}"
             if args.correction_min_sigma else "")
          + (f", corrections at the times of {args.correction_grid_steps} steps"
             if args.correction_grid_steps else ""))  # fmt: skip
    torch.set_num_threads(1)
    if args.case == "trajectory":
        print(
            "| case | guidance | steps | corrections | mean gap closed | spread ratio | s/run |\n"
            "|---|---|---:|---:|---:|---:|---:|"
        )
        trajectory_rows(args)
        return

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
                    x, seconds = timed_sample(
                        lambda x, t, g=guidance: g.guided_eps(prior.eps, x, t, sde),
                        (args.members, *prior.shape), steps, corrections, args,
                    )  # fmt: skip
                    agreement = posterior_agreement(x, prior.mean, post_mean, post_cov)
                    print(
                        f"| {name} | {label} | {steps} | {corrections} "
                        f"| {agreement['gap_closed']:.3f} | {agreement['spread_ratio']:.3f} "
                        f"| {seconds:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
