"""Do a score network's unconditional samples have the data's spread?

The measurement behind ``studies/prior_spread.py`` (every network of a finished run) and
``studies/prior_levers.py`` (networks retrained with one training lever changed): draw
``members`` trajectories of ``days`` days from the prior alone (the run's Markov-blanket
denoiser and sampler, unguided) and divide the standard deviation of their temperature
(standardised anomaly, over members, days and grid points) by the data's, level by level.
For a latent network the draws are decoded, and the decoder's validation residuals added as
the analyses add them (``assimilation.decoder_residuals_in_members``).

Two references: the validation split's spread (``ratio``) and the training years' (``trained``:
the state is standardised by the training days' RMS anomaly, so theirs is 1 at every level;
the networks learnt those years, and where the validation year varies more the first ratio is
low even for a perfect prior). An exact score does not give 1 with few steps either, so
:func:`exact_ratio` gives what an exact Gaussian trajectory keeps under the same sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from slams.assimilation import SamplerSettings
from slams.diffusion import VPSDE
from slams.diffusion.analytic import GaussianTrajectory
from slams.diffusion.blanket import MarkovBlanketDenoiser
from slams.diffusion.sampler import sample
from slams.methods import METHODS
from slams.methods.latent import (
    add_decoder_residuals,
    decoder_outputs,
    latent_statistics,
    validation_reconstruction,
)
from slams.models import for_sampling, load_model, states_of
from slams.paths import autoencoder_name, dataset_path, latents_path, model_path


def level_std(x: np.ndarray) -> np.ndarray:
    """Standard deviation per channel of ``x (..., C, H, W)`` over everything else."""
    channels = x.shape[-3]
    return np.moveaxis(x, -3, 0).reshape(channels, -1).std(axis=1)


# Zonal-wavenumber bands of :func:`zonal_band_variance`: the zonal mean, the planetary waves,
# the synoptic ones and the rest (half-open ranges of k; None: to the grid's last).
ZONAL_BANDS = {"k 0": (0, 1), "k 1-3": (1, 4), "k 4-10": (4, 11), "k 11+": (11, None)}


def zonal_band_variance(x: np.ndarray) -> np.ndarray:
    """Mean square of ``x (..., C, H, W)`` per channel and :data:`ZONAL_BANDS` band of zonal
    wavenumber, ``(C, bands)``: the one-sided power of the FFT along longitude (Parseval, so
    the bands sum to the channel's mean square), averaged over everything but the channel."""
    width = x.shape[-1]
    power = np.abs(np.fft.rfft(x, axis=-1)) ** 2 / width**2
    power[..., 1:] *= 2.0
    if width % 2 == 0:
        power[..., -1] /= 2.0  # the Nyquist wavenumber has no mirror
    power = np.moveaxis(power, -3, 0).reshape(x.shape[-3], -1, power.shape[-1]).mean(axis=1)
    return np.stack([power[:, lo:hi].sum(axis=1) for lo, hi in ZONAL_BANDS.values()], axis=1)


def band_table(train: np.ndarray, rows: list, columns: tuple[str, ...]) -> list[str]:
    """The lines of a Markdown table of the draws' variance per zonal band over the training
    years' (``train``: :func:`zonal_band_variance` of those), beside each band's share of the
    training years' variance; ``rows``: ``(labels, drawn)`` with one label per ``columns``."""
    share = train / train.sum(axis=1, keepdims=True)
    lines = [
        "",
        "Variance per zonal wavenumber band, draws over the training years' (1: the data's); "
        "share: the band's part of the training years' variance (mean over levels)",
        "",
        "| " + " | ".join(columns) + " | band | share | variance ratio (mean) | per level |",
        "|" + "---|" * len(columns) + "---|---:|---:|---|",
    ]
    for labels, drawn in rows:
        ratio = drawn / train
        for j, band in enumerate(ZONAL_BANDS):
            lines.append(
                "| " + " | ".join(str(label) for label in labels) + f" | {band} | "
                f"{share[:, j].mean():.2f} | {ratio[:, j].mean():.2f} | "
                + " ".join(f"{v:.2f}" for v in ratio[:, j])
                + " |"
            )
    return lines


def split_path(run: str | Path, network: str, split: str) -> str:
    """The file score network ``network`` learns ``split`` from: the dataset, or its modality
    set's latent codes."""
    modalities = METHODS[network].modalities
    if modalities is None:
        return dataset_path(run, split)
    return latents_path(run, modalities, split)


def clean_windows(run: str | Path, network: str, split: str, count: int) -> torch.Tensor:
    """``count`` evenly spaced non-overlapping Markov-blanket windows ``(N, K * C, H, W)`` of a
    finished run's ``split``, in the space score network ``network`` learnt (the standardised
    states, or its modality set's standardised latent codes)."""
    from slams.config import run_config
    from slams.train import window_samples

    window = run_config(run)["score"]["blanket_days"]
    windows = window_samples(split_path(run, network, split), network, window, overlapping=False)
    picked = np.linspace(0, len(windows) - 1, min(count, len(windows))).astype(int)
    return torch.stack([torch.as_tensor(np.asarray(windows[i])) for i in picked]).float()


def denoiser_calibration(
    net, x: torch.Tensor, times, generator: torch.Generator, batch: int = 8
) -> list[dict]:
    """How a noise-predicting ``net`` estimates the clean windows ``x (N, C, H, W)`` at each
    of ``times`` (``studies/denoiser_calibration.py``): ``x(t) = mu x + sigma eps``,
    ``x_hat = (x(t) - sigma net(x(t), t)) / mu``; per ``t`` the regression slope of ``x`` on
    ``x_hat`` through 0 (1 for the Bayes estimator ``E[x | x(t)]``; above 1: shrunk), the same
    for the zonal means alone, ``Var(x_hat) / Var(x)`` and ``MSE / Var(x)``."""
    sde = VPSDE()
    rows = []
    for t in times:
        time = torch.tensor(t, dtype=x.dtype)
        mu, sigma = sde.mu(time), sde.sigma(time)
        x_t = mu * x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        with torch.no_grad():
            eps = torch.cat([net(part, torch.full((len(part),), t, dtype=x.dtype))
                             for part in x_t.split(batch)])  # fmt: skip
        estimate = (x_t - sigma * eps) / mu
        zonal, zonal_estimate = x.mean(-1), estimate.mean(-1)
        zonal_slope = (zonal * zonal_estimate).mean() / zonal_estimate.square().mean()
        rows.append({
            "t": t, "snr": ((mu / sigma) ** 2).item(),
            "slope": ((x * estimate).mean() / estimate.square().mean()).item(),
            "zonal_slope": zonal_slope.item(),
            "variance": (estimate.var() / x.var()).item(),
            "mse": ((x - estimate).square().mean() / x.var()).item(),
        })  # fmt: skip
    return rows


def path_spread(
    net, x: torch.Tensor, options: dict, generator: torch.Generator, members: int | None = None
) -> list[dict]:
    """Where along the sampling path a prior loses its spread (``studies/prior_path.py``).

    ``members`` unguided draws of one window shaped like the clean windows ``x (N, C, H, W)``
    with ``sample``'s ``options``; at every network call, at time ``t``: the variance of the
    sampler's state over the data's marginal at ``t`` (``mu^2 Var(x) + sigma^2``), and the
    variance of the network's estimate of the clean window ``(x(t) - sigma eps) / mu`` on the
    sampler's states and on the data noised to the same ``t``, both over ``Var(x)``. An exact
    score gives the same estimate variance on both; where the first falls behind, the draws
    commit to less structure than the data hold. The last row (``t = None``) is the draws'
    variance over the data's."""
    sde = VPSDE()
    variance = x.var().item()
    rows = []

    def eps_fn(state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = t[:1]
        mu, sigma = sde.mu(time).item(), sde.sigma(time).item()
        eps = net(state, t)
        noised = mu * x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        on_data = (noised - sigma * net(noised, time.expand(len(x)))) / mu
        rows.append({
            "t": time.item(),
            "state": state.var().item() / (mu**2 * variance + sigma**2),
            "estimate_path": ((state - sigma * eps) / mu).var().item() / variance,
            "estimate_data": on_data.var().item() / variance,
        })  # fmt: skip
        return eps

    with torch.no_grad():
        draws = sample(eps_fn, (members or len(x), *x.shape[1:]), sde, **options,
                       generator=generator, progress=False, dtype=x.dtype)  # fmt: skip
    rows.append({"t": None, "state": draws.var().item() / variance})
    return rows


def network_sampler(config: dict, space: str) -> dict:
    """The sampler the analyses take for score network ``space``: the shared one with its
    ``assimilation.sampler_by_space`` keys in place (a network's name is that of the method
    that samples with it alone)."""
    from slams.config import method_assimilation

    return method_assimilation(config["assimilation"], space)["sampler"]


def sample_options(sampler: dict, steps: int, corrections: int) -> dict:
    """``sample``'s options for the config's ``sampler`` at ``steps`` + ``corrections``, as the
    analyses take them (``SamplerSettings.sample_options``)."""
    return SamplerSettings(
        **{**sampler, "steps": steps, "corrections": corrections}
    ).sample_options()


def prior_draws(net, window: int, shape: tuple, options: dict, seed: int) -> torch.Tensor:
    """``shape[0]`` unguided trajectories of the network's prior."""
    denoiser = MarkovBlanketDenoiser(net, window=window)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sample(denoiser, shape, VPSDE(), **options, generator=generator, progress=False)


def exact_ratio(days: int, window: int, options: dict, members: int = 2000) -> float:
    """The spread an exact score keeps under this sampler: ``members`` unconditional draws of
    the unit-variance Gaussian trajectory of ``days`` days (``GaussianTrajectory``, 4 x 8
    grid), its exact ``window``-day scores composed by the blanket, in float64; their standard
    deviation (per point, then averaged) over the prior's, which is 1."""
    trajectory = GaussianTrajectory(length=days)
    denoiser = MarkovBlanketDenoiser(trajectory.window_net(window), window=window)
    generator = torch.Generator().manual_seed(0)
    draws = sample(denoiser, (members, days, *trajectory.state), VPSDE(), **options,
                   generator=generator, progress=False, dtype=torch.float64)  # fmt: skip
    return draws.reshape(members, -1).std(dim=0).mean().item()


@dataclass
class PriorSpread:
    """One network's prior spread: per level (``ratio``: over the validation split's std;
    ``trained``: over the training years', which is 1), and for a latent network the codes'
    ratio (in the latent space) and the decoded one before the decoder's residuals."""

    ratio: np.ndarray
    trained: np.ndarray
    codes: float | None = None
    decoded: float | None = None
    bands: np.ndarray | None = None  # zonal_band_variance of the draws, (levels, bands)


class RunData:
    """What measuring a run's priors needs once: the validation temperature and, per latent
    modality set, the autoencoder, the code statistics and the decoder's residuals."""

    def __init__(self, run: str | Path):
        self.run = Path(run)
        with xr.open_dataset(dataset_path(self.run, "validation")) as ds:
            data_t = states_of(ds.load(), ["t"]).numpy()
            self.pressure = [int(v) for v in ds["level"].values]  # hPa, in the state's order
        self.levels = data_t.shape[1]
        self.grid = data_t.shape[-2:]
        self.data_std = level_std(data_t)
        self._train_bands: np.ndarray | None = None
        self._latent: dict[str, tuple] = {}

    def train_bands(self) -> np.ndarray:
        """:func:`zonal_band_variance` of the training years' temperature (every 4th day)."""
        if self._train_bands is None:
            with xr.open_dataset(dataset_path(self.run, "train")) as ds:
                days = ds.isel(time=slice(None, None, 4)).load()
            self._train_bands = zonal_band_variance(states_of(days, ["t"]).numpy())
        return self._train_bands

    def latent(self, modalities: str) -> tuple:
        """``(autoencoder, z_mean, z_std, codes_std, code_shape, residuals)``."""
        if modalities not in self._latent:
            run = self.run
            autoencoder, meta = load_model(model_path(run, autoencoder_name(modalities)))
            for_sampling(autoencoder)
            z_mean, z_std = latent_statistics(latents_path(run, modalities, "train"))
            with xr.open_dataset(latents_path(run, modalities, "validation")) as ds:
                codes = ((states_of(ds.load(), ["z"]) - z_mean) / z_std).numpy()
            split, parts = validation_reconstruction(
                autoencoder, meta, decoder_outputs(meta, self.levels),
                dataset_path(run, "validation"),
            )  # fmt: skip
            residuals = states_of(split, ["t"]) - parts["t"]
            self._latent[modalities] = (autoencoder, z_mean, z_std, level_std(codes),
                                        tuple(codes.shape[1:]), residuals)  # fmt: skip
        return self._latent[modalities]

    def measure(
        self, network: str, net, meta: dict, window: int, options: dict, members: int,
        days: int, seed: int = 0,
    ) -> PriorSpread:  # fmt: skip
        """The prior spread of ``net``, the score network of method space ``network``."""
        modalities = METHODS[network].modalities
        if modalities is None:
            shape = (int(meta["state_channels"]), *self.grid)
            x = prior_draws(net, window, (members, days, *shape), options, seed)
            final = x[:, :, : self.levels].numpy()
            codes = decoded = None
        else:
            autoencoder, z_mean, z_std, codes_std, shape, residuals = self.latent(modalities)
            x = prior_draws(net, window, (members, days, *shape), options, seed)
            codes = float((level_std(x.numpy()) / codes_std).mean())
            with torch.no_grad():
                out = torch.stack(
                    [autoencoder.decode(m * z_std + z_mean)[:, : self.levels] for m in x]
                )
            decoded = float((level_std(out.numpy()) / self.data_std).mean())
            final = add_decoder_residuals(out, residuals, seed + 2).numpy()
        spread = level_std(final)
        return PriorSpread(spread / self.data_std, spread, codes, decoded,
                           zonal_band_variance(final))  # fmt: skip
