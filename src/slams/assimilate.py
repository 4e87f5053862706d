"""Assimilation: ensembles of analyses over the test period, in pixel or latent space.

Pixel (SDA): the state is the standardised temperature ``(T, levels, H, W)`` and the observation
is ``y = A(x) + noise``. Latent (SLAMS, as the paper does it): the state is the standardised
latent code ``z = E(temperature, modalities)`` of the frozen encoder and the observation is
``y = A(z) + noise``; the sampled codes are decoded to temperature. Both sample the whole window
at once through the Markov-blanket score, guided by the Gaussian likelihood of ``y``.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from slams.config import format_value
from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.observe import MeasurementOperator, observed_days

log = logging.getLogger(__name__)

# A zero observation variance makes the likelihood singular at t -> 0 (the gamma term vanishes);
# this floor keeps the guidance finite and is far below every variance of the ablation grid.
MIN_OBSERVATION_VARIANCE = 1e-3


DIFFUSION_METHODS = ("pixel", "latent-none", "latent-insitu", "latent-exsitu", "latent-both")


@dataclass
class SamplerSettings:
    """Reverse-SDE sampler and likelihood guidance (config ``assimilation.sampler``).

    ``guidance``: ``sda`` (the paper's, with the ``gamma`` stability term) or ``mmps``
    (moment matching through ``cg_iterations`` conjugate-gradient iterations; ``gamma`` unused).
    """

    steps: int = 512
    corrections: int = 1
    tau: float = 0.5
    gamma: float = 1e-2
    guidance: str = "sda"
    cg_iterations: int = 3

    def __post_init__(self):
        if self.guidance not in ("sda", "mmps"):
            raise ValueError(f"guidance must be 'sda' or 'mmps', got {self.guidance!r}")

    def make_guidance(self, observe, y: Tensor, variance: Tensor | float):
        if self.guidance == "mmps":
            return MomentMatchingGuidance(observe, y, variance, cg_iterations=self.cg_iterations)
        return GaussianGuidance(observe, y, variance, gamma=self.gamma)


@dataclass
class Measurement:
    """One ablation setting: block-average factor, spatial gap, noise variance, day stride."""

    coarsen: int = 1
    gap: int = 1
    noise: float = 0.0
    every: int = 1

    @classmethod
    def from_params(cls, params: dict) -> Measurement:
        return cls(
            coarsen=int(params["coarsen"]),
            gap=int(params["gap"]),
            noise=float(params["noise"]),
            every=int(params["every"]),
        )

    def operator(self) -> MeasurementOperator:
        return MeasurementOperator(coarsen=self.coarsen, gap=self.gap, noise_variance=self.noise)


def window_slices(n_days: int, window_days: int, min_days: int) -> list[slice]:
    """Cut ``n_days`` into consecutive windows of about ``window_days``, none shorter than
    ``min_days`` (a short remainder is merged into the previous window)."""
    if n_days < min_days:
        raise ValueError(
            f"the assimilation period has {n_days} days, fewer than the score window {min_days}"
        )
    bounds = [*range(0, n_days, window_days), n_days]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_days:
        bounds.pop(-2)
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def make_observations(
    states: Tensor,
    measurement: Measurement,
    generator: torch.Generator,
    variance: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """Observed-day mask ``(T,)`` and noisy observations ``A(x) + e`` of the observed days.

    ``variance`` (default ``measurement.noise``) may be per channel, broadcastable to one
    day's observation ``(C, h, w)``, e.g. ``(C, 1, 1)``.
    """
    observed = observed_days(states.shape[0], measurement.every)
    variance = measurement.noise if variance is None else variance
    clean = measurement.operator()(states[observed])
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return observed, clean + torch.as_tensor(variance, dtype=clean.dtype).sqrt() * noise


def assimilate_states(
    denoiser: MarkovBlanketDenoiser,
    observed: Tensor,
    y: Tensor,
    measurement: Measurement,
    state_shape: tuple[int, int, int],
    members: int,
    window_days: int,
    settings: SamplerSettings,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = True,
    variance: Tensor | float | None = None,
) -> Tensor:
    """Sample ``members`` analyses of the whole period, window by window.

    ``observed`` ``(T,)`` bool, ``y`` ``(n_observed, C, h, w)``; returns ``(M, T, C, H, W)``.
    ``variance``: the observation-error variance the guidance assumes (default
    ``measurement.noise``; per channel as ``(C, 1, 1)``), floored at 1e-3.
    Each window is one batched guided sampling of ``(M, L, C, H, W)``; a window without any
    observed day is sampled from the prior alone.
    """
    sde = VPSDE()
    operator = measurement.operator()
    if variance is None:
        variance = measurement.noise
    variance = torch.as_tensor(variance, dtype=torch.float32).clamp(min=MIN_OBSERVATION_VARIANCE)
    n_days = observed.shape[0]
    obs_index = torch.cumsum(observed.long(), 0) - 1  # position of each observed day in y
    pieces = []
    for window in window_slices(n_days, window_days, denoiser.window):
        days = torch.arange(window.start, window.stop)
        local = (days - window.start)[observed[days]]
        shape = (members, len(days), *state_shape)
        if len(local) == 0:
            eps_fn = denoiser
        else:
            y_window = y[obs_index[days[observed[days]]]].to(device)

            def observe(x: Tensor, local: Tensor = local) -> Tensor:
                return operator(x[:, local])

            guidance = settings.make_guidance(observe, y_window, variance.to(device))

            def eps_fn(x: Tensor, t: Tensor, guidance=guidance) -> Tensor:
                return guidance.guided_eps(denoiser, x, t, sde)

        x = sample(
            eps_fn,
            shape,
            sde,
            steps=settings.steps,
            corrections=settings.corrections,
            tau=settings.tau,
            generator=generator,
            device=device,
            progress=progress,
        )
        pieces.append(x.detach().cpu())
    return torch.cat(pieces, dim=1)


def upsample_observations(
    observed: Tensor, y: Tensor, measurement: Measurement, grid_shape: tuple[int, int]
) -> Tensor:
    """Observations on the full grid for plotting ``(T, C, H, W)``: NaN on unobserved days."""
    operator = measurement.operator()
    up = operator.upsample(y, grid_shape)
    full = torch.full((observed.shape[0], *up.shape[1:]), float("nan"))
    full[observed] = up
    return full


def analysis_dataset(
    analysis_k: np.ndarray,
    truth: xr.DataArray,
    observation_k: np.ndarray | None,
    observed: np.ndarray,
    attrs: dict,
) -> xr.Dataset:
    """The analysis file: ensemble, truth and observations in kelvin with CF attributes."""
    coords = {k: truth[k] for k in ("time", "level", "lat", "lon")}
    dims = ("time", "level", "lat", "lon")
    ds = xr.Dataset(coords=coords)
    ds["analysis"] = xr.DataArray(
        analysis_k.astype(np.float32),
        dims=("member", *dims),
        coords={"member": np.arange(analysis_k.shape[0]), **coords},
        attrs={"units": "K", "long_name": "analysed air temperature (ensemble)"},
    )
    ds["truth"] = truth.astype(np.float32).assign_attrs(
        units="K", long_name="true air temperature (ERA5 or synthetic world)"
    )
    if observation_k is not None:
        ds["observation"] = xr.DataArray(
            observation_k.astype(np.float32),
            dims=dims,
            coords=coords,
            attrs={
                "units": "K",
                "long_name": "pixel-space observation A(truth) + noise on the full grid",
                "comment": "NaN where or when unobserved; latent methods observe A(E(truth)) "
                "instead, this field is shown for reference",
            },
        )
    ds["observed"] = xr.DataArray(
        observed.astype(np.int8), dims=("time",), attrs={"long_name": "day was observed"}
    )
    ds.attrs.update({"Conventions": "CF-1.8", **{k: _attr(v) for k, v in attrs.items()}})
    return ds


def _attr(value):
    return str(value) if isinstance(value, bool | type(None) | dict | list) else value


def _select_period(ds: xr.Dataset, period: list[str] | None) -> xr.Dataset:
    if period is None:
        return ds
    selected = ds.sel(time=slice(period[0], period[1]))
    if selected.sizes["time"] == 0:
        raise ValueError(
            f"assimilation.period {period[0]}..{period[1]} holds no day of the test split"
        )
    return selected


def run_method(
    method: str,
    axis: str,
    value: str,
    measurement_params: dict,
    assimilation: dict,
    window: int,
    paths: dict,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Assimilate the test period with one method in one ablation setting.

    ``paths`` holds ``test``, ``stats``, ``climatology`` and, by method, ``score``,
    ``autoencoder`` and ``latents`` (diffusion methods) or ``background`` (``oi``).

    The pixel state is the standardised anomaly about the day-of-year climatology; its
    observation noise variance is given in the paper's units (the full field standardised per
    level) and converted per level, so that the noise in kelvin is the paper's. ``pixel`` and
    ``oi`` see the very same observations (same seed). Latent methods observe the standardised
    latent code, with the variance in its units, as the paper does.
    """
    from slams.baselines import Background, OptimalInterpolation
    from slams.data.dataset import climatology_of, from_anomaly, load_stats, noise_to_state_units
    from slams.train import load_model, resolve_device, states_of

    torch_device = resolve_device(device)
    measurement = Measurement.from_params(measurement_params)
    sampler = SamplerSettings(**assimilation.get("sampler", {}))
    members = int(assimilation.get("members", 1))
    window_days = int(assimilation.get("window_days", 0))
    stats = load_stats(paths["stats"])
    test = _select_period(xr.open_dataset(paths["test"]), assimilation.get("period"))
    with xr.open_dataset(paths["climatology"]) as climatology:
        clim_k = climatology_of(climatology, test["time"]).values  # (T, L, H, W)
    x_true = states_of(test, ["t"])
    truth_k = (
        test["t"]
        .transpose("time", "level", "lat", "lon")
        .copy(data=from_anomaly(x_true.numpy(), clim_k, stats))
    )
    grid = tuple(x_true.shape[-2:])

    pixel_variance = torch.from_numpy(noise_to_state_units(measurement.noise, stats)).float()
    observed, y_pixel = make_observations(
        x_true, measurement, torch.Generator().manual_seed(seed), pixel_variance
    )
    observation_k = from_anomaly(
        upsample_observations(observed, y_pixel, measurement, grid).numpy(), clim_k, stats
    )

    attrs = {
        "method": method,
        "axis": axis,
        "value": float(value),
        "coarsen": measurement.coarsen,
        "gap": measurement.gap,
        "noise_variance": measurement.noise,
        "observe_every_days": measurement.every,
        "members": members,
        "seed": seed,
        "noise_units": (
            "variance in standardised units of the observed space (pixel: the full field "
            "standardised per level, as in the paper; latent: the standardised latent code)"
        ),
        "state": "standardised anomaly about the day-of-year climatology of the training years",
    }
    if method in DIFFUSION_METHODS:
        attrs.update(
            window_days=window_days,
            steps=sampler.steps,
            corrections=sampler.corrections,
            tau=sampler.tau,
            gamma=sampler.gamma if sampler.guidance == "sda" else 0.0,
            guidance=sampler.guidance,
            cg_iterations=sampler.cg_iterations if sampler.guidance == "mmps" else 0,
        )
    generator = torch.Generator(device=torch_device).manual_seed(seed + 1)
    if method == "climatology":
        analysis_k = clim_k[None]
        attrs["members"] = 1
    elif method == "oi":
        background = Background.load(paths["background"])
        operator = measurement.operator()
        diagonal = operator(background.residual[None])[0] / measurement.coarsen**2
        variance = pixel_variance.clamp(min=MIN_OBSERVATION_VARIANCE)
        oi = OptimalInterpolation(background, operator, diagonal, variance)
        cpu = torch.Generator().manual_seed(seed + 1)
        analysis = background.sample(members * len(observed), cpu).reshape(
            members, len(observed), *background.residual.shape
        )
        if observed.any():
            analysis[:, observed] = oi.ensemble(y_pixel, members, cpu)
        analysis_k = from_anomaly(analysis.numpy(), clim_k, stats)
        attrs["background_rank"] = int(background.variances.shape[0])
        attrs["unobserved_days"] = "background: climatology, members drawn from B"
    elif method == "pixel":
        net, _ = load_model(paths["score"], torch_device)
        denoiser = MarkovBlanketDenoiser(net, window=window)
        analysis = assimilate_states(
            denoiser, observed, y_pixel, measurement, tuple(x_true.shape[1:]), members,
            window_days, sampler, generator, torch_device, progress, variance=pixel_variance,
        )  # fmt: skip
        analysis_k = from_anomaly(analysis.numpy(), clim_k, stats)
    elif method.startswith("latent-"):
        latents = _select_period(xr.open_dataset(paths["latents"]), assimilation.get("period"))
        z_mean = torch.from_numpy(latents["z_mean"].values)[:, None, None]
        z_std = torch.from_numpy(latents["z_std"].values)[:, None, None]
        z = (states_of(latents, ["z"]) - z_mean) / z_std
        observed_z, y_latent = make_observations(
            z, measurement, torch.Generator().manual_seed(seed + 2)
        )
        net, _ = load_model(paths["score"], torch_device)
        autoencoder, _ = load_model(paths["autoencoder"], torch_device)
        denoiser = MarkovBlanketDenoiser(net, window=window)
        z_analysis = assimilate_states(
            denoiser, observed_z, y_latent, measurement, tuple(z.shape[1:]), members,
            window_days, sampler, generator, torch_device, progress,
        )  # fmt: skip
        z_analysis = z_analysis * z_std + z_mean
        with torch.no_grad():
            decoded = torch.stack(
                [autoencoder.decode(member.to(torch_device)).cpu() for member in z_analysis]
            )
        analysis_k = from_anomaly(decoded.numpy(), clim_k, stats)
        attrs["latent_channels"] = int(z.shape[1])
        attrs["latent_grid"] = "x".join(str(n) for n in z.shape[-2:])
    else:
        raise ValueError(f"unknown method {method!r}")
    log.info("%s %s-%s: %d members x %d days", method, axis, value, *analysis_k.shape[:2])
    return analysis_dataset(
        np.asarray(analysis_k), truth_k, np.asarray(observation_k), observed.numpy(), attrs
    )


def relabel_copy(source: str | Path, target: str | Path, axis: str, value: str | float) -> None:
    """Copy an analysis to the name of another cell of the same observation setting.

    Only the global ``axis`` and ``value`` attributes change (and ``same_setting_as`` names
    the source cell), so the evaluation files the copy under its own cell. The data are
    copied byte for byte, without reading them into memory.
    """
    import netCDF4

    shutil.copyfile(source, target)
    with netCDF4.Dataset(target, "a") as nc:
        original = f"{nc.getncattr('axis')}-{format_value(nc.getncattr('value'))}"
        nc.setncattr("axis", axis)
        nc.setncattr("value", float(value))
        nc.setncattr("same_setting_as", original)


def background_of(train_path: str, rank: int, seed: int = 0, progress: bool = True):
    """The OI background covariance of the training anomalies (see :mod:`slams.baselines`),
    streamed from the training split."""
    from slams.baselines import estimate_background
    from slams.data.samples import NetCDFSamples

    samples = NetCDFSamples(train_path, ["t"], np.arange(0))
    n_days = samples.n_days
    shape = (samples.channels, *samples.grid)

    def days():
        for start in range(0, n_days, 64):
            count = min(64, n_days - start)
            yield torch.from_numpy(samples.read(start, count))

    return estimate_background(days, n_days, shape, rank, seed=seed, progress=progress)
