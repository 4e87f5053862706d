"""Score-based latent assimilation (SLAMS): the state is the standardised latent code of an
autoencoder whose encoder read temperature plus 0, 1 or 2 observation modalities.

- ``physical`` protocol: the likelihood goes through the decoder, which reconstructs every
  modality its encoder reads: ``y_t ~ A(D_t(z))``, ``y_p ~ D_p(z)`` on the gauges,
  ``y_olr ~ D_olr(z)``, one Gaussian likelihood with each term's own variance: the
  observation error plus, by default (``assimilation.decoder_error_in_likelihood``), the
  decoder's own error for that quantity (measured on validation days, see
  :func:`decoder_error_variance`). No truth is needed beyond the observations.
- ``paper`` protocol (the paper's): the latent code itself is observed, ``y = A(E(true stack))
  + noise``, with the noise in standardised latent units; forming ``y`` needs the truth.

The sampled codes are decoded to temperature in both and, by default
(``assimilation.decoder_residuals_in_members``), each decoded member gets a residual
``x - D(E(x))`` of a validation day, centred over the members (:func:`add_decoder_residuals`):
the spread of the codes reaches the temperature field but the decoder's own error does not,
and without it the ensembles are under-dispersive.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import netCDF4
import numpy as np
import torch
import xarray as xr
from torch.utils.checkpoint import checkpoint

from slams.assimilation import assimilate_states, sampler_attrs, select_period
from slams.data.dataset import from_anomaly
from slams.diffusion import MarkovBlanketDenoiser
from slams.models import for_sampling, load_model, states_of


def latent_statistics(path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training split's latent codes ``(C, 1, 1)`` each."""
    with netCDF4.Dataset(str(path)) as ds:
        mean, std = (np.asarray(ds.variables[k][:], dtype=np.float32) for k in ("z_mean", "z_std"))
    return torch.from_numpy(mean)[:, None, None], torch.from_numpy(std)[:, None, None]


def paper_latents(method: str, context) -> torch.Tensor:
    """The standardised latent codes of the TRUE days (the paper protocol's observed field)."""
    z_mean, z_std = latent_statistics(context.paths["latent_stats"])
    with xr.open_dataset(context.paths["latents"]) as ds:
        latents = select_period(ds, context.period).load()
    return (states_of(latents, ["z"]) - z_mean) / z_std


def decoded_fields(decoder, outputs, z_mean, z_std, chunk: int | None = None):
    """The observed fields of a standardised latent state ``(B, n, C, h, w)``: the decoder's
    output channels (temperature levels, then each modality), split by name.

    ``chunk``: where autograd records the decoding (the guidance's gradient), the most states
    whose decoder activations are kept at once: the states are decoded ``chunk`` at a time
    under activation checkpointing, which keeps each chunk's input and recomputes its
    activations in the backward pass, one chunk at a time (the same gradient, for a second
    forward pass of the decoder). ``None``: all states at once."""
    sizes = [n for _, n in outputs]

    def run(codes):
        return decoder(codes * z_std + z_mean)

    def decode(x):
        batch, days = x.shape[:2]
        codes = x.flatten(0, 1)
        if chunk is None or len(codes) <= chunk or not (torch.is_grad_enabled() and
                                                         codes.requires_grad):  # fmt: skip
            decoded = run(codes)
        else:
            decoded = torch.cat([checkpoint(run, part, use_reentrant=False)
                                 for part in codes.split(chunk)])  # fmt: skip
        decoded = decoded.reshape(batch, days, *decoded.shape[1:])
        parts = torch.split(decoded, sizes, dim=2)
        return {name: part for (name, _), part in zip(outputs, parts, strict=True)}

    return decode


def decoder_outputs(meta: dict, levels: int) -> list[tuple[str, int]]:
    """``[(name, channels)]`` of an autoencoder's decoder output, in order."""
    names = meta.get("decodes", ["t"])
    return [(name, levels if name == "t" else 1) for name in names]


@torch.no_grad()
def validation_reconstruction(autoencoder, meta: dict, outputs, validation_path, days: int = 64):
    """The autoencoder's reconstruction ``D(E(x))`` of ``days`` validation days spread over the
    split (never the assimilated period): ``(split, {name: decoded (N, C, H, W)})``."""
    from slams.models import autoencoder_inputs

    device = next(autoencoder.parameters()).device
    with xr.open_dataset(validation_path) as ds:
        n_days = ds.sizes["time"]
        picked = np.unique(np.linspace(0, n_days - 1, min(days, n_days)).round().astype(int))
        split = ds.isel(time=picked).load()
    inputs = torch.from_numpy(autoencoder_inputs(split, meta["modalities"])).to(device)
    decoded = autoencoder(inputs).cpu()
    parts = dict(zip([n for n, _ in outputs], torch.split(decoded, [c for _, c in outputs], 1),
                     strict=True))  # fmt: skip
    return split, parts


def decoder_error_variance(reconstruction, observations) -> dict[str, torch.Tensor]:
    """The decoder's error variance for each observed quantity, as the setting observes it.

    On the validation days of ``reconstruction`` (:func:`validation_reconstruction`) the
    reconstruction and the true fields go through each field's operator (the coarsening and
    gap of temperature; the validity mask of precipitation and OLR); the variance of the
    difference per channel (temperature: per level, ``(L, 1, 1)``; the others: a scalar) is
    the error of the decoder as an observation operator. Adding it to the observation error
    variance keeps a likelihood through an imperfect decoder from trusting it more than its
    reconstructions deserve.
    """
    split, parts = reconstruction
    variances = {}
    for name, field in observations.fields.items():
        truth = states_of(split, [name])
        error = field.operator(parts[name]) - field.operator(truth)
        if name == "t":
            variances[name] = error.square().mean(dim=(0, 2, 3))[:, None, None]
        else:
            valid = states_of(split, [f"{name}_mask"]) > 0.5
            variances[name] = error[valid].square().mean()
    return variances


def add_decoder_residuals(
    members: torch.Tensor, residuals: torch.Tensor, seed: int, inplace: bool = False
):
    """Each member ``(M, T, L, H, W)`` plus a residual field of a randomly drawn validation day
    (independently per member and day), centred over the members, so that the ensemble mean
    is unchanged and the members' sample variance (``M - 1`` in the denominator, as the
    spread is scored) gains the decoder's error variance in expectation; a single member gets
    the residual as drawn. ``inplace``: added to ``members`` itself, a day at a time.

    A decoded member ``D(z)`` lacks what the decoder cannot reconstruct: the spread of the
    codes reaches the temperature field, but the reconstruction error (the larger part of the
    error when the observations are good) does not, and the ensemble is under-dispersive."""
    generator = torch.Generator().manual_seed(seed)
    count, days = members.shape[:2]
    picked = torch.randint(len(residuals), (count, days), generator=generator)
    out = members.clone() if not inplace else members
    for day in range(days):  # a day at a time: no ensemble-sized draw of residuals
        noise = residuals[picked[:, day]]
        if count > 1:
            noise = noise - noise.mean(0, keepdim=True)
        out[:, day] += noise.to(out)
    return out


def decode_members(autoencoder, ensemble, z_mean, z_std, levels: int, days: int | None = None):
    """The temperature ``(M, T, levels, H, W)`` of sampled codes ``(M, T, C, h, w)``,
    decoded ``days`` days at a time (``None``: a member's whole period at once) into one
    tensor on the CPU: the decoder's activations are those of a chunk, not of the period."""
    members, length = ensemble.shape[:2]
    out = None
    step = days or length
    with torch.no_grad():
        for m in range(members):
            for first in range(0, length, step):
                codes = ensemble[m, first : first + step].to(z_mean.device) * z_std + z_mean
                decoded = autoencoder.decode(codes)[:, :levels].cpu()
                if out is None:
                    out = decoded.new_empty((members, length, *decoded.shape[1:]))
                out[m, first : first + step] = decoded
    return out


def analyse(method, observations, context):
    device = context.device
    net, _ = load_model(context.paths["score"], device)
    autoencoder, meta = load_model(context.paths["autoencoder"], device)
    for_sampling(net), for_sampling(autoencoder)
    levels = context.climatology_k.shape[1]
    z_mean, z_std = (v.to(device) for v in latent_statistics(context.paths["latent_stats"]))
    outputs = decoder_outputs(meta, levels)

    @functools.cache
    def reconstruction():
        """The validation days and their reconstruction, read once for the decoder's error
        variance and its residuals."""
        return validation_reconstruction(autoencoder, meta, outputs, context.paths["validation"])

    if observations.protocol == "paper":

        def state_fields(x):
            return {"z": x}
    else:
        decoded = {name for name, _ in outputs}
        needed = set(observations.fields)
        if not needed <= decoded:
            raise ValueError(
                f"{context.paths['autoencoder']} decodes {sorted(decoded)}, but {method} observes "
                f"{sorted(needed)} under the physical protocol: retrain it (the decoder must "
                "reconstruct every modality its encoder reads)"
            )
        state_fields = decoded_fields(
            autoencoder.decode, outputs, z_mean, z_std, context.windows_per_call
        )
        if context.decoder_error_in_likelihood:
            extra = decoder_error_variance(reconstruction(), observations)
            observations = replace(
                observations,
                fields={
                    name: replace(f, variance=f.variance + extra[name].to(f.variance))
                    for name, f in observations.fields.items()
                },
            )
            decoder_error = {name: v.flatten().tolist() for name, v in extra.items()}
    grid = (
        context.climatology_k.shape[-2] // autoencoder.downsample,
        context.climatology_k.shape[-1] // autoencoder.downsample,
    )
    shape = (int(z_mean.shape[0]), *grid)
    ensemble = assimilate_states(
        MarkovBlanketDenoiser(net, window=context.blanket_days, chunk=context.windows_per_call),
        observations,
        state_fields,
        shape,
        context,
    )
    decoded_t = decode_members(
        autoencoder, ensemble, z_mean, z_std, levels, context.windows_per_call
    )
    del ensemble
    if context.decoder_residuals_in_members:
        split, parts = reconstruction()
        residuals = states_of(split, ["t"]) - parts["t"]  # x - D(E(x)), standardised anomaly
        add_decoder_residuals(decoded_t, residuals, context.seed + 2, inplace=True)
    temperature = decoded_t.numpy()
    analysis_k = from_anomaly(temperature, context.climatology_k, context.stats, out=temperature)
    attrs = {
        **sampler_attrs(context),
        "latent_channels": shape[0],
        "latent_grid": "x".join(str(n) for n in grid),
        "decoder_outputs": ",".join(name for name, _ in outputs),
        "decoder_residuals": (
            "validation residuals x - D(E(x)) added to the members, centred"
            if context.decoder_residuals_in_members
            else "none"
        ),
    }
    if observations.protocol == "physical":
        attrs["decoder_error"] = (
            "added to the observation error variance: "
            + "; ".join(
                f"{k} {' '.join(f'{v:.3g}' for v in vs)}" for k, vs in decoder_error.items()
            )
            if context.decoder_error_in_likelihood
            else "not in the likelihood"
        )
    return analysis_k, attrs
