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
        [--steps 16 64] [--corrections 0 1] [--solver dpm2m] [--members 8] [--days 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from slams.assimilation import SamplerSettings
from slams.config import run_config
from slams.diffusion import VPSDE
from slams.diffusion.analytic import GaussianTrajectory
from slams.diffusion.blanket import MarkovBlanketDenoiser
from slams.diffusion.sampler import sample
from slams.methods import METHODS, SCORE_NETWORKS
from slams.methods.latent import (
    add_decoder_residuals,
    decoder_outputs,
    latent_statistics,
    validation_reconstruction,
)
from slams.models import for_sampling, load_model, states_of
from slams.paths import (
    autoencoder_name,
    dataset_path,
    latents_path,
    model_path,
    score_name,
)


def level_std(x: np.ndarray) -> np.ndarray:
    """Standard deviation per channel of ``x (..., C, H, W)`` over everything else."""
    channels = x.shape[-3]
    return np.moveaxis(x, -3, 0).reshape(channels, -1).std(axis=1)


def sample_options(sampler: dict, steps: int, corrections: int) -> dict:
    """``sample``'s options for the config's ``sampler`` at ``steps`` + ``corrections``, as the
    analyses take them (``SamplerSettings.sample_options``)."""
    return SamplerSettings(
        **{**sampler, "steps": steps, "corrections": corrections}
    ).sample_options()


def prior_draws(net, window: int, shape: tuple, steps: int, corrections: int, sampler: dict, seed):
    denoiser = MarkovBlanketDenoiser(net, window=window)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sample(denoiser, shape, VPSDE(), **sample_options(sampler, steps, corrections),
                      generator=generator, progress=False)  # fmt: skip


def exact_ratio(days: int, window: int, steps: int, corrections: int, sampler: dict) -> float:
    """The spread an exact score keeps under this sampler: 2000 unconditional draws of the
    unit-variance Gaussian trajectory of ``days`` days (``GaussianTrajectory``, 4 x 8 grid),
    its exact ``window``-day scores composed by the blanket, in float64; their standard
    deviation (per point, then averaged) over the prior's, which is 1."""
    trajectory = GaussianTrajectory(length=days)
    denoiser = MarkovBlanketDenoiser(trajectory.window_net(window), window=window)
    generator = torch.Generator().manual_seed(0)
    draws = sample(denoiser, (2000, days, *trajectory.state), VPSDE(),
                   **sample_options(sampler, steps, corrections), generator=generator,
                   progress=False, dtype=torch.float64)  # fmt: skip
    return draws.reshape(2000, -1).std(dim=0).mean().item()


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = run_config(args.run)
    sampler = config["assimilation"]["sampler"]
    if args.solver:
        sampler["solver"] = args.solver
    window = config["score"]["blanket_days"]
    networks = args.networks or [
        space for space in SCORE_NETWORKS if Path(model_path(args.run, score_name(space))).exists()
    ]
    with xr.open_dataset(dataset_path(args.run, "validation")) as ds:
        data_t = states_of(ds.load(), ["t"]).numpy()
    data_std = level_std(data_t)
    levels = data_t.shape[1]
    print(f"run {args.run}: {args.members} members x {args.days} days, validation std per level "
          f"{' '.join(f'{v:.2f}' for v in data_std)} (standardised anomaly; the training "
          "years' is 1 at every level)\n")  # fmt: skip
    print("| network | steps | corrections | codes | decoded | as analysed | as analysed / "
          "training std | exact score | per level (final) | s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    exact = {}
    for name in networks:
        net, meta = load_model(model_path(args.run, score_name(name)))
        for_sampling(net)
        modalities = METHODS[name].modalities  # a network is named by its method's space
        latent = modalities is not None
        if latent:
            autoencoder, ae_meta = load_model(model_path(args.run, autoencoder_name(modalities)))
            for_sampling(autoencoder)
            z_mean, z_std = latent_statistics(latents_path(args.run, modalities, "train"))
            with xr.open_dataset(latents_path(args.run, modalities, "validation")) as ds:
                codes = ((states_of(ds.load(), ["z"]) - z_mean) / z_std).numpy()
            codes_std = level_std(codes)
            shape = tuple(codes.shape[1:])
            split, parts = validation_reconstruction(
                autoencoder, ae_meta, decoder_outputs(ae_meta, levels),
                dataset_path(args.run, "validation"),
            )  # fmt: skip
            residuals = states_of(split, ["t"]) - parts["t"]
        else:
            shape = (int(meta["state_channels"]), *data_t.shape[-2:])
        for steps in args.steps or [sampler["steps"]]:
            for corrections in (
                args.corrections if args.corrections is not None else [sampler["corrections"]]
            ):
                start = time.perf_counter()
                x = prior_draws(net, window, (args.members, args.days, *shape), steps,
                                corrections, sampler, args.seed)  # fmt: skip
                cells = {"codes": "–", "decoded": "–"}
                if latent:
                    cells["codes"] = f"{(level_std(x.numpy()) / codes_std).mean():.2f}"
                    with torch.no_grad():
                        decoded = torch.stack([
                            autoencoder.decode(m * z_std + z_mean)[:, :levels] for m in x
                        ])  # fmt: skip
                    cells["decoded"] = f"{(level_std(decoded.numpy()) / data_std).mean():.2f}"
                    final = add_decoder_residuals(decoded, residuals, args.seed + 2).numpy()
                else:
                    final = x[:, :, :levels].numpy()
                ratio = level_std(final) / data_std
                seconds = time.perf_counter() - start
                # the state is standardised by the training days' RMS anomaly about the
                # climatology (stats.json), so their spread is 1 at every level by construction
                trained = level_std(final).mean()
                if (steps, corrections) not in exact:
                    exact[steps, corrections] = exact_ratio(
                        max(args.days, window), window, steps, corrections, sampler
                    )
                print(f"| {name} | {steps} | {corrections} | {cells['codes']} | "
                      f"{cells['decoded']} | {ratio.mean():.2f} | {trained:.2f} | "
                      f"{exact[steps, corrections]:.2f} | "
                      f"{' '.join(f'{v:.2f}' for v in ratio)} | {seconds:.0f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
