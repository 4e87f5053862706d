"""Where do the latent ensembles lose their spread? Spread/skill of variants of a finished run.

On the networks and test period of a finished run (default ``results/demo``), every named case
is assimilated again by a method with one setting changed at a time, and scored on the observed
days: RMSE of the ensemble mean, CRPS and spread/skill (mean over the levels). For latent
methods the spread/skill of the sampled codes themselves is printed too, against the encoded
truth (``E(true stack)``, standardised), which tells whether the spread is lost in the latent
space or by the decoder. Variants: the run's sampler, 2x and 4x its steps, ``gamma`` x10,
``tau`` x2, ``mmps`` guidance, ``eps_scale K`` for each ``--eps-scale K`` and, for latent
methods, no decoder residuals, no decoder error in the likelihood, the paper protocol. Usage::

    python studies/calibration.py [results/demo] [--methods pixel latent-none latent-both]
        [--protocol physical] [--cases ideal coarse noisy sparse] [--variants ...]
        [--eps-scale 1.02 1.04]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import slams.methods.latent as latent_family
from slams.assimilation import assimilate_case, select_period
from slams.config import run_config
from slams.methods import METHODS
from slams.metrics import score_analysis
from slams.models import autoencoder_inputs, load_model
from slams.paths import autoencoder_name, dataset_path, latents_path, model_path

CAPTURED: list[torch.Tensor] = []
_sample = latent_family.assimilate_states


def _capturing(*args, **kwargs):
    """The latent family's sampler, keeping the sampled codes for the latent spread/skill."""
    ensemble = _sample(*args, **kwargs)
    CAPTURED.append(ensemble)
    return ensemble


latent_family.assimilate_states = _capturing


def encoded_truth(run: Path, method: str, period) -> torch.Tensor:
    """The standardised latent codes of the true test days ``(T, C, h, w)``."""
    modalities = METHODS[method].modalities
    model, _ = load_model(model_path(run, autoencoder_name(modalities)))
    z_mean, z_std = latent_family.latent_statistics(latents_path(run, modalities, "train"))
    with xr.open_dataset(dataset_path(run, "test")) as ds:
        split = select_period(ds, period).load()
    with torch.no_grad():
        z = model.encode(torch.from_numpy(autoencoder_inputs(split, modalities)))
    return (z - z_mean) / z_std


def variants(
    assimilation: dict, protocol: str, method: str, eps_scales: tuple[float, ...] = ()
) -> dict[str, tuple[str, dict]]:
    """name -> (protocol, assimilation section) of each variant; one ``eps_scale K`` variant
    per ``eps_scales`` value (the sampler's epsilon scaling, beyond the paper)."""
    base = copy.deepcopy(assimilation)
    out = {"run's sampler": (protocol, base)}

    def changed(**sampler):
        section = copy.deepcopy(base)
        section["sampler"].update(sampler)
        return protocol, section

    sampler = base["sampler"]
    out["steps x2"] = changed(steps=2 * sampler["steps"])
    out["steps x4"] = changed(steps=4 * sampler["steps"])
    out["gamma x10"] = changed(gamma=10 * sampler["gamma"])
    out["tau x2"] = changed(tau=2 * sampler["tau"])
    out["mmps"] = changed(guidance="mmps")
    for scale in eps_scales:
        out[f"eps_scale {scale:g}"] = changed(eps_scale=scale)
    if METHODS[method].modalities is not None:
        no_residuals = copy.deepcopy(base)
        no_residuals["decoder_residuals_in_members"] = False
        out["no decoder residuals"] = (protocol, no_residuals)
        if protocol == "physical":
            no_error = copy.deepcopy(base)
            no_error["decoder_error_in_likelihood"] = False
            out["no decoder error"] = (protocol, no_error)
            out["paper protocol"] = ("paper", base)
            out["paper protocol, no decoder residuals"] = ("paper", no_residuals)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--methods", nargs="+", default=["pixel", "latent-none", "latent-both"])
    parser.add_argument("--protocol", default="physical")
    parser.add_argument("--cases", nargs="+", default=["ideal", "coarse", "noisy", "sparse"])
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    parser.add_argument("--eps-scale", nargs="+", type=float, default=[],
                        help="add an 'eps_scale K' variant per value")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = run_config(args.run)  # the config the run was made with
    section = config["assimilation"]
    print("| method | variant | case | RMSE (K) | CRPS (K) | spread/skill | latent spread/skill "
          "| s |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        chosen = variants(section, args.protocol, method, tuple(args.eps_scale))
        for name, (protocol, assimilation) in chosen.items():
            if args.variants and name not in args.variants:
                continue
            for case in args.cases:
                start = time.perf_counter()
                CAPTURED.clear()
                ds = assimilate_case(args.run, config, protocol, method, case, assimilation)
                seconds = time.perf_counter() - start
                scores = score_analysis(ds, observed_only=True).groupby("metric")["score"].mean()
                latent = "–"
                if CAPTURED:
                    observed = ds["observed"].values.astype(bool)
                    z_true = encoded_truth(args.run, method, section["period"]).numpy()
                    ratio = latent_spread_skill(CAPTURED[0].numpy()[:, observed], z_true[observed])
                    latent = f"{ratio:.3f}"
                print(
                    f"| {method} | {name} | {case} | {scores['rmse']:.3f} | {scores['crps']:.3f} "
                    f"| {scores['spread_skill']:.3f} | {latent} | {seconds:.0f} |",
                    flush=True,
                )


def latent_spread_skill(z: np.ndarray, z_true: np.ndarray) -> float:
    """Spread/skill of latent codes ``z (M, T, C, h, w)`` against ``z_true (T, C, h, w)``."""
    members = z.shape[0]
    mean = z.mean(0)
    skill = np.sqrt(((mean - z_true) ** 2).mean())
    spread = np.sqrt(z.var(0, ddof=1).mean() * (members + 1) / members)
    return float(spread / skill)


if __name__ == "__main__":
    main()
