"""Is a score network's denoiser a calibrated estimator of the clean window, noise level by level?

For Markov-blanket windows ``x`` of a finished run's split (default: validation), noised as the
training loss does, ``x(t) = mu(t) x + sigma(t) eps``, the network's estimate of the clean
window is ``x_hat = (x(t) - sigma(t) eps_hat) / mu(t)``. For the Bayes estimator
``E[x | x(t)]``, ``Cov(x, x_hat) = Var(x_hat)``: the regression slope of ``x`` on ``x_hat`` is 1
(above 1: the estimate is shrunk towards the mean; below: it is noisier than it should be).
A calibrated estimator can still be less informative than the data allow: then its mean
squared error is larger and ``Var(x_hat) = Var(x) - MSE`` smaller, and samples drawn with it
are narrower than the data, though no noise level is biased. Per ``t``, the table gives the
slope over all points, the same for the zonal mean alone, ``Var(x_hat) / Var(x)`` and
``MSE / Var(x)``.

Usage::

    python studies/denoiser_calibration.py results/study --network latent-none [--split train]
        [--windows 48]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from slams.models import for_sampling, load_model
from slams.paths import model_path, score_name
from slams.studies.prior_spread import clean_windows, denoiser_calibration

TIMES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--network", default="latent-none")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--windows", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    net, _ = load_model(model_path(args.run, score_name(args.network)))
    for_sampling(net)
    x = clean_windows(args.run, args.network, args.split, args.windows)
    print(f"{args.run} {args.network}, {args.split}: {len(x)} windows {tuple(x.shape[1:])}, "
          f"Var(x) {x.var():.3f}\n")  # fmt: skip
    print("| t | mu² / sigma² | slope | slope of the zonal mean | Var(x_hat) / Var(x) | "
          "MSE / Var(x) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(args.seed)
    for row in denoiser_calibration(net, x, TIMES, generator):
        print(f"| {row['t']:.2f} | {row['snr']:.2f} | {row['slope']:.3f} | "
              f"{row['zonal_slope']:.3f} | {row['variance']:.3f} | {row['mse']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
