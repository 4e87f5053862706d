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
(``GaussianTrajectory.observation_case``, :mod:`slams.studies.exact_posterior`); a first row
gives the floor: as many exact posterior samples. Usage::

    python studies/gaussian_posterior.py [--case state|trajectory] [--members 2000]
        [--steps 16 32 64 128 256 512] [--corrections 0 1 2] [--window 3]
        [--guidance sda mmps] [--gamma 0.01] [--mmps-iterations 3] [--solver ddim] [--tau 0.5]
        [--tau-reference-steps N] [--correction-min-sigma 0] [--correction-grid-steps N]
        [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from slams.assimilation import SamplerSettings
from slams.diffusion import VPSDE, GaussianGuidance, MomentMatchingGuidance
from slams.diffusion.analytic import GaussianPrior, posterior_agreement
from slams.observations import MeasurementOperator
from slams.studies.exact_posterior import TrajectoryProblem, sda_label, timed_sample


def settings(args, steps: int, corrections: int) -> SamplerSettings:
    """The sampler of the command line's options at ``steps`` and ``corrections``."""
    return SamplerSettings(
        steps=steps, corrections=corrections, tau=args.tau, solver=args.solver,
        tau_reference_steps=args.tau_reference_steps,
        correction_min_sigma=args.correction_min_sigma,
        correction_grid_steps=args.correction_grid_steps,
    )  # fmt: skip


def trajectory_rows(args) -> None:
    """The table for the trajectory case (see the module docstring)."""
    problem = TrajectoryProblem(args.window, args.members, args.mmps_iterations, args.gamma)
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
                sampler = settings(args, steps, corrections)
                x, seconds = timed_sample(problem.eps_fn(label), problem.shape, sampler, args.seed)
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
    parser.add_argument("--mmps-iterations", type=int, default=3)
    parser.add_argument("--variance", type=float, default=0.1)
    parser.add_argument("--case", choices=["state", "trajectory"], default="state")
    parser.add_argument(
        "--window", type=int, default=3, help="days per blanket window (trajectory case)"
    )
    parser.add_argument("--guidance", nargs="+", default=["sda", "mmps"], help="sda and/or mmps")
    parser.add_argument(
        "--gamma",
        type=float,
        nargs="+",
        default=[1e-2],
        help="SDA's gamma, one row each (1e-2: the paper's)",
    )
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
            sda_label(gamma): GaussianGuidance(operator, y, args.variance, gamma=gamma)
            for gamma in args.gamma
        }
        for solver in ("gmres", "cg"):
            guidances[f"mmps-{solver}{args.mmps_iterations}"] = MomentMatchingGuidance(
                operator, y, args.variance, iterations=args.mmps_iterations, linear_solver=solver
            )
        for label, guidance in guidances.items():
            if label.split("-")[0] not in args.guidance:
                continue
            for steps in args.steps:
                for corrections in args.corrections:
                    x, seconds = timed_sample(
                        lambda x, t, g=guidance: g.guided_eps(prior.eps, x, t, sde),
                        (args.members, *prior.shape), settings(args, steps, corrections),
                        args.seed,
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
