"""The measurement operator ``A`` and the observations of one ablation setting, built once
and handed to every method.

:class:`MeasurementOperator` is ``A``: a differentiable block average, a spatial gap and
additive Gaussian noise (:class:`Measurement`: one setting's parameters, with the day
stride of :func:`observed_days`). :func:`build_observations` applies it to the truth of
the test period under one of two protocols.

Two protocols form them (``assimilation.protocols``):

- ``physical``: what a user with real observations has. One set per setting, drawn once from
  the truth with the run's seed and shared by every method:

  - ``t``: temperature ``A(T) + noise`` (block mean, gap, noise of variance ``sigma^2`` in the
    paper's units: the full field standardised per level), on every ``every``-th day;
  - ``precip`` (in situ): the gauge analysis where it is valid (land), plus noise;
  - ``olr`` (ex situ): OLR wherever it is valid, plus noise;

  precipitation and OLR on the same days as temperature, on the target grid, each with its own
  error variance (``assimilation.observation_variance``). Nothing else of the truth reaches a
  method.
- ``paper``: the paper's protocol, kept to reproduce its figures. Pixel-space methods observe
  ``t`` as above; the latent methods observe ``A(E(true stack)) + noise`` (``z``), the encoded
  TRUE temperature and modalities, coarsened, with noise in the standardised latent code. Forming
  ``z`` needs the full-resolution truth, which a real user does not have.

Every field is held in the units of the dataset's normalised variables (temperature: the
standardised anomaly state; precipitation: standardised ``log1p``; OLR and latent codes:
standardised), which are the units the methods' likelihoods use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from slams.methods import PROTOCOLS
from slams.models import states_of


def observed_days(n_days: int, every: int) -> torch.BoolTensor:
    """``(n_days,)`` booleans: day ``i`` is observed iff ``i % every == 0``."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return torch.arange(n_days) % every == 0


class MeasurementOperator:
    """Linear observation operator ``A`` followed by additive Gaussian noise (paper 3.1, 4).

    ``A(x)``: block average over ``coarsen x coarsen`` cells (an unweighted mean of the grid
    cells, as in the paper's ablation; not area weighted), then keep every ``gap``-th
    coarse point in both directions, ``[..., ::gap, ::gap]``:
    ``(..., H, W) -> (..., ceil(H / coarsen / gap), ceil(W / coarsen / gap))``.
    ``y = A(x) + sqrt(noise_variance) * N(0, I)``: ``noise_variance`` is a VARIANCE.
    """

    def __init__(self, coarsen: int = 1, gap: int = 1, noise_variance: float = 0.0):
        if coarsen < 1 or gap < 1:
            raise ValueError(f"coarsen and gap must be >= 1, got coarsen={coarsen}, gap={gap}")
        if noise_variance < 0:
            raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")
        self.coarsen = coarsen
        self.gap = gap
        self.noise_variance = noise_variance

    def __call__(self, x: Tensor) -> Tensor:
        """``A(x)``, linear and differentiable: ``(..., H, W) -> (..., h, w)``."""
        *lead, height, width = x.shape
        c = self.coarsen
        if height % c or width % c:
            raise ValueError(
                f"coarsening factor {c} must divide the grid, got H={height}, W={width}"
            )
        coarse = x.reshape(*lead, height // c, c, width // c, c).mean(dim=(-3, -1))
        return coarse[..., :: self.gap, :: self.gap]

    def noisy(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``A(x) + sqrt(noise_variance) * N(0, I)``; noise drawn with ``generator``."""
        clean = self(x)
        source = generator.device if generator is not None else clean.device
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=source)
        return clean + self.noise_variance**0.5 * noise.to(clean.device)

    def upsample(self, y: Tensor, shape: Sequence[int]) -> Tensor:
        """Observations back on the state grid, for plotting: ``(..., h, w) -> (..., H, W)``.

        ``shape`` ends with ``(H, W)`` (a full state shape is fine). Each observed coarse
        cell fills its ``coarsen x coarsen`` block with its value; blocks of coarse points
        skipped by the gap are NaN.
        """
        height, width = shape[-2], shape[-1]
        c, gap = self.coarsen, self.gap
        coarse = torch.full(
            (*y.shape[:-2], height // c, width // c), float("nan"), dtype=y.dtype, device=y.device
        )
        expected = coarse[..., ::gap, ::gap].shape[-2:]
        if y.shape[-2:] != expected:
            raise ValueError(
                f"observations of shape {tuple(y.shape[-2:])} do not fit a grid of "
                f"{(height, width)} with coarsen={c}, gap={gap} (expected {tuple(expected)})"
            )
        coarse[..., ::gap, ::gap] = y
        return coarse.repeat_interleave(c, dim=-2).repeat_interleave(c, dim=-1)

    observed_days = staticmethod(observed_days)

    def __repr__(self) -> str:
        return (
            f"MeasurementOperator(coarsen={self.coarsen}, gap={self.gap}, "
            f"noise_variance={self.noise_variance})"
        )


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


# Observed quantities of the physical protocol, in the order they are drawn.
PHYSICAL_FIELDS = ("t", "precip", "olr")
# Seed offsets of the observation noise (the sampler uses seed + 1): the temperature noise keeps
# the seed itself, so the pixel-space observations are the same under both protocols.
_SEED_OFFSETS = {"t": 0, "z": 2, "precip": 3, "olr": 4}


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class ObservedField:
    """One observed quantity on the observed days.

    ``values (D, C, h, w)``: observations of the ``D`` observed days (0 where ``mask`` is
    False); ``mask`` bool of the same shape; ``variance`` the error variance, broadcastable to
    ``values`` (e.g. ``(C, 1, 1)``); ``operator`` the linear map from the full field of one or
    more days ``(..., C, H, W)`` to ``(..., C, h, w)``; ``grid`` the ``(H, W)`` of that field.
    """

    name: str
    values: Tensor
    mask: Tensor
    variance: Tensor
    operator: Callable[[Tensor], Tensor] = _identity
    grid: tuple[int, int] | None = None

    def __post_init__(self):
        self.mask = self.mask.bool().expand(self.values.shape)
        self.values = torch.where(self.mask, self.values, torch.zeros((), dtype=self.values.dtype))
        self.variance = torch.as_tensor(self.variance, dtype=self.values.dtype)
        if (self.variance < 0).any():
            raise ValueError(f"observation variance of {self.name} must be non-negative")


@dataclass
class Observations:
    """Every observed field of one setting: ``observed (T,)`` marks the observed days; each
    field holds those days only, in order."""

    protocol: str
    measurement: Measurement
    observed: Tensor
    fields: dict[str, ObservedField] = field(default_factory=dict)

    @property
    def n_observed(self) -> int:
        return int(self.observed.sum())

    def select(self, names: Sequence[str]) -> Observations:
        """The same observations restricted to ``names`` (a method's modalities)."""
        missing = [n for n in names if n not in self.fields]
        if missing:
            raise KeyError(
                f"the {self.protocol} observations hold {sorted(self.fields)}, not {missing}"
            )
        return replace(self, fields={n: self.fields[n] for n in names})

    def segment(self, start: int, stop: int) -> tuple[Tensor, dict[str, ObservedField]]:
        """Observed days of days ``start .. stop - 1``: their positions in the segment ``(n,)``
        and every field restricted to them."""
        days = torch.arange(start, stop)
        rows = torch.cumsum(self.observed.long(), 0)[days] - 1
        seen = self.observed[days]
        local, rows = (days - start)[seen], rows[seen]
        return local, {
            name: replace(f, values=f.values[rows], mask=f.mask[rows])
            for name, f in self.fields.items()
        }


def _noisy(clean: Tensor, variance: Tensor, name: str, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + _SEED_OFFSETS[name])
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return clean + variance.to(clean.dtype).sqrt() * noise


def temperature_variance(noise: float, stats: Mapping) -> Tensor:
    """The temperature noise variance, given in the paper's units (the full field standardised
    per level), in the anomaly state's units per level ``(L, 1, 1)``: ``noise (std /
    anomaly_std)^2``, so that the noise in kelvin is the paper's whatever the state's scaling."""
    ratio = np.asarray(stats["t"]["std"]) / np.asarray(stats["t"]["anomaly_std"])
    return torch.from_numpy(noise * ratio**2).float()[:, None, None]


def build_observations(
    protocol: str,
    split: xr.Dataset,
    measurement: Measurement,
    stats: Mapping,
    seed: int,
    variances: Mapping[str, float] | None = None,
    latents: Tensor | None = None,
    fields: Sequence[str] | None = None,
) -> Observations:
    """The observations of one setting from the normalised test split (``t``, ``precip``,
    ``olr`` and their masks over the assimilated days).

    ``variances``: error variances of ``precip`` and ``olr`` (physical protocol), in their
    standardised units. ``latents``: under ``paper``, the standardised latent codes of the true
    days ``(T, C, h, w)``, observed as ``A(z) + noise`` (the field ``z``); ``None`` for a method
    that has none. ``fields``: which of the physical protocol's fields to draw (default all).
    Same seed, same observations: each field's noise has a generator of its own, so every
    method of a setting sees identical arrays of the fields it draws.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    truth = states_of(split, ["t"])
    observed = observed_days(truth.shape[0], measurement.every)
    operator = measurement.operator()
    grid = tuple(truth.shape[-2:])
    obs = Observations(protocol, measurement, observed)
    variance = temperature_variance(measurement.noise, stats)
    clean = operator(truth[observed])
    obs.fields["t"] = ObservedField(
        "t", _noisy(clean, variance, "t", seed), torch.ones(clean.shape, dtype=torch.bool),
        variance, operator, grid,
    )  # fmt: skip
    if protocol == "physical":
        variances = dict(variances or {})
        wanted = PHYSICAL_FIELDS if fields is None else fields
        for name in [f for f in ("precip", "olr") if f in wanted]:
            if name not in variances:
                raise KeyError(f"the physical protocol needs an error variance for {name}")
            values = states_of(split, [name])[observed]
            mask = states_of(split, [f"{name}_mask"])[observed] > 0.5
            var = torch.tensor(float(variances[name])).reshape(1, 1, 1)
            noisy = _noisy(values, var, name, seed)
            obs.fields[name] = ObservedField(name, noisy, mask, var, _identity, grid)
    elif latents is not None:
        if latents.shape[0] != truth.shape[0]:
            raise ValueError(f"{latents.shape[0]} days of latent codes for {truth.shape[0]} days")
        clean = operator(latents[observed])
        var = torch.tensor(float(measurement.noise))
        obs.fields["z"] = ObservedField(
            "z", _noisy(clean, var, "z", seed), torch.ones(clean.shape, dtype=torch.bool), var,
            operator, tuple(latents.shape[-2:]),
        )  # fmt: skip
    return obs


def _on_days(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    full = np.full((observed.size, *values.shape[1:]), np.nan, dtype=np.float32)
    full[observed] = values
    return full


def observation_variables(
    obs: Observations,
    coords: Mapping[str, xr.DataArray],
    climatology_k: np.ndarray,
    stats: Mapping,
) -> dict[str, xr.DataArray]:
    """The observations a method used, for its analysis file, in physical units on the days
    and grid of the analysis (NaN where or when nothing was observed), with their masks.

    ``coords``: ``time``, ``level``, ``lat``, ``lon`` of the analysis; ``climatology_k``
    ``(T, L, H, W)`` in K. Temperature in K (each observed coarse cell fills its block),
    precipitation in mm/day (the noise is added to standardised ``log1p``, so a noisy dry
    observation can be slightly negative), OLR in W m-2, latent codes in standardised units.
    """
    from slams.data.dataset import from_anomaly

    observed = obs.observed.numpy()
    dims3 = ("time", "lat", "lon")
    out = {}
    for name, f in obs.fields.items():
        if name == "t":
            up = obs.measurement.operator().upsample(f.values, f.grid).numpy()
            values = from_anomaly(_on_days(up, observed), climatology_k, stats)
            out["observation"] = xr.DataArray(
                values.astype(np.float32),
                dims=("time", "level", "lat", "lon"),
                coords={k: coords[k] for k in ("time", "level", "lat", "lon")},
                attrs={
                    "units": "K",
                    "long_name": "temperature observation A(truth) + noise on the full grid",
                    "comment": "each observed coarse cell fills its block; NaN where or when "
                    "unobserved",
                },
            )
        elif name in ("precip", "olr"):
            scale = stats[name]
            values = f.values[:, 0].numpy() * scale["std"] + scale["mean"]
            mask = _on_days(f.mask[:, 0].numpy().astype(np.float32), observed)
            mask = np.nan_to_num(mask, nan=0.0).astype(np.int8)
            if name == "precip":
                values = np.expm1(values) if scale.get("transform") == "log1p" else values
                units, long_name = "mm day-1", "precipitation observation (gauges, land)"
            else:
                units, long_name = "W m-2", "outgoing longwave radiation observation"
            values = np.where(mask > 0, _on_days(values, observed), np.nan)
            c = {k: coords[k] for k in dims3}
            out[f"observation_{name}"] = xr.DataArray(
                values.astype(np.float32), dims=dims3, coords=c,
                attrs={"units": units, "long_name": long_name, "comment": "NaN where or when "
                       "unobserved; error variance in standardised units: "
                       f"{float(f.variance.max()):g}"},
            )  # fmt: skip
            out[f"observation_{name}_mask"] = xr.DataArray(
                mask, dims=dims3, coords=c, attrs={"long_name": f"{name} was observed here"}
            )
        elif name == "z":
            out["observation_latent"] = xr.DataArray(
                _on_days(f.values.numpy(), observed),
                dims=("time", "latent_channel", "latent_obs_lat", "latent_obs_lon"),
                coords={"time": coords["time"]},
                attrs={
                    "units": "1",
                    "long_name": "latent observation A(E(true stack)) + noise (paper protocol)",
                    "comment": "standardised latent code, coarsened; NaN on unobserved days",
                },
            )
    return out
