"""Do the score networks' priors have the data's spread? Unconditional samples of a finished run.

For every score network of a finished run (default ``results/demo``), ``--members``
trajectories of ``--days`` days are drawn from the prior alone (no observation: the run's
Markov-blanket denoiser and sampler, unguided), and the standard deviation of their
temperature (standardised anomaly, over members, days and grid points) is divided by that of
the validation split's days, level by level (and, in one column, over the training years':
the networks learnt those, and where the validation year varies more, the first ratio is low
even for a perfect prior). Below 1 the prior is too smooth and the analyses drawn from it
under-dispersive where the observations say little. An exact score does not give 1 with few
steps either: the first-order predictor under-disperses (an exact Gaussian trajectory of
``--days`` days, its exact window scores composed through the same blanket, has 0.88 of its
spread at 16 steps and 0.92 at 32 with ``ddim``, 0.96 and 0.97 with ``dpm2m``), so each row
also gives that exact trajectory's ratio at the same sampler (column "exact score"): a network
is as good as a perfect one where its ratio reaches that one. For latent networks, three
ratios: the sampled codes against the validation split's codes (both standardised by the
training codes' statistics, so in the latent space), the decoded temperature, and the decoded
temperature with the decoder's validation residuals added as the analyses get them
(``assimilation.decoder_residuals_in_members``).

Usage::

    python studies/prior_spread.py [results/demo] [--networks pixel latent-none ...]
        [--steps 16 64] [--corrections 0 1] [--solver dpm2m] [--members 8] [--days 8] [--bands]

``--bands`` adds where the spread is missing: per zonal-wavenumber band (the zonal mean, waves
1-3, 4-10, 11 and up), the band's share of the training years' variance and the draws'
variance in that band over the training years', level by level (a variance ratio: the square
of the spread's).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from slams.config import run_config
from slams.methods import SCORE_NETWORKS
from slams.models import for_sampling, load_model
from slams.paths import model_path, score_name
from slams.studies.prior_spread import (
    RunData,
    band_table,
    exact_ratio,
    network_sampler,
    sample_options,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--networks", nargs="+", help="score networks (default: all the run has)")
    parser.add_argument("--steps", nargs="+", type=int, help="default: the run's sampler")
    parser.add_argument("--corrections", nargs="+", type=int, help="default: the run's sampler")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solver", default=None, help="default: the run's sampler")
    parser.add_argument("--bands", action="store_true", help="variance per zonal band too")
    parser.add_argument("--eps-scale", nargs="+", type=float, default=[1.0],
                        help="the sampler's eps_scale (epsilon scaling; 1: off)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = run_config(args.run)
    window = config["score"]["blanket_days"]
    networks = args.networks or [
        space for space in SCORE_NETWORKS if Path(model_path(args.run, score_name(space))).exists()
    ]
    data = RunData(args.run)
    print(f"run {args.run}: {args.members} members x {args.days} days, validation std per level "
          f"{' '.join(f'{v:.2f}' for v in data.data_std)} (standardised anomaly; the training "
          "years' is 1 at every level)\n")  # fmt: skip
    print("| network | solver | steps | corrections | eps_scale | codes | decoded | as analysed | "
          "as analysed / training std | exact score | per level (final) | s |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    exact, bands = {}, []
    for name in networks:
        sampler = network_sampler(config, name)  # its own (assimilation.sampler_by_space)
        if args.solver:
            sampler["solver"] = args.solver
        net, meta = load_model(model_path(args.run, score_name(name)))
        for_sampling(net)
        grid = itertools.product(
            args.steps or [sampler["steps"]],
            args.corrections if args.corrections is not None else [sampler["corrections"]],
            args.eps_scale,
        )
        for steps, corrections, eps_scale in grid:
            options = sample_options(sampler, steps, corrections) | {"eps_scale": eps_scale}
            start = time.perf_counter()
            spread = data.measure(name, net, meta, window, options, args.members, args.days,
                                  args.seed)  # fmt: skip
            seconds = time.perf_counter() - start
            key = tuple(sorted(options.items()))
            if key not in exact:
                exact[key] = exact_ratio(max(args.days, window), window, options)
            cells = ["–" if v is None else f"{v:.2f}" for v in (spread.codes, spread.decoded)]
            print(f"| {name} | {options['solver']} | {steps} | {corrections} | {eps_scale:g} | "
                  f"{cells[0]} | {cells[1]} | "
                  f"{spread.ratio.mean():.2f} | {spread.trained.mean():.2f} | {exact[key]:.2f} | "
                  f"{' '.join(f'{v:.2f}' for v in spread.ratio)} | {seconds:.0f} |",
                  flush=True)  # fmt: skip
            bands.append(((name, options["solver"], steps, corrections, f"{eps_scale:g}"),
                          spread.bands))  # fmt: skip
    if args.bands:
        columns = ("network", "solver", "steps", "corrections", "eps_scale")
        print("\n".join(band_table(data.train_bands(), bands, columns)))


if __name__ == "__main__":
    main()
