"""Where along the sampling path does a score network's prior lose its spread?

Unguided draws of one Markov-blanket window of a finished run's network (its own sampler by
default), against the training split's windows: at each network call, the variance of the
sampler's state over the data's marginal at that time, and the variance of the network's
estimate of the clean window on the sampler's states and on the training windows noised to
the same time (:func:`slams.studies.prior_spread.path_spread`). An exact score gives the same
estimate on both; where the path's falls behind, the draws have committed to less structure
than the data hold, and later steps do not make it up.

Usage::

    python studies/prior_path.py results/study --networks latent-none
        [--steps 32] [--corrections 0] [--solver ddim] [--windows 64] [--rows 12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from slams.config import run_config
from slams.models import for_sampling, load_model
from slams.paths import model_path, score_name
from slams.studies.prior_spread import (
    clean_windows,
    network_sampler,
    path_spread,
    sample_options,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--networks", nargs="+", default=["latent-none"])
    parser.add_argument("--model", type=Path, help="another model file of the (one) network")
    parser.add_argument("--steps", type=int, help="default: the network's sampler")
    parser.add_argument("--corrections", type=int, help="default: the network's sampler")
    parser.add_argument("--solver", help="default: the network's sampler")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--rows", type=int, default=12, help="network calls printed, evenly")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = run_config(args.run)
    window = config["score"]["blanket_days"]
    for name in args.networks:
        sampler = dict(network_sampler(config, name))
        if args.solver:
            sampler["solver"] = args.solver
        options = sample_options(
            sampler,
            args.steps if args.steps is not None else sampler["steps"],
            args.corrections if args.corrections is not None else sampler["corrections"],
        )
        x = clean_windows(args.run, name, "train", args.windows)
        model = args.model or Path(model_path(args.run, score_name(name)))
        net, _ = load_model(model)
        for_sampling(net)
        rows = path_spread(net, x, options, torch.Generator().manual_seed(args.seed))
        *calls, final = rows
        print(f"\n{model}: {options['solver']} {options['steps']} + {options['corrections']}, "
              f"{len(x)} draws of one {window}-day window against {len(x)} training windows; "
              f"the draws' variance over the data's: {final['state']:.3f}\n")  # fmt: skip
        print("| t | state / data marginal | estimate on the path | estimate on the data |")
        print("|---:|---:|---:|---:|")
        shown = np.unique(np.linspace(0, len(calls) - 1, min(args.rows, len(calls))).astype(int))
        for row in (calls[i] for i in shown):
            print(f"| {row['t']:.3f} | {row['state']:.3f} | {row['estimate_path']:.3f} | "
                  f"{row['estimate_data']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
