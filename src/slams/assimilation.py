"""Assimilation: one ensemble analysis of the test period per protocol, method and setting.

Below the method families (:mod:`slams.methods`): what a method may use besides its observations
(:class:`Context`), the sampler's settings (:class:`SamplerSettings`), the period of a split and
:func:`assimilate_states`, guided sampling of the whole period (or of independent segments of
it) through the Markov-blanket score, with one Gaussian likelihood of whichever fields the
method observes. Above them: :func:`run_cell`, one cell's run, which builds the setting's
:class:`~slams.observations.Observations` once, hands them to the method's family and writes
what comes back, an ensemble in kelvin, with the truth and every observation the method used
(:func:`analysis_dataset`). The families import this module; it imports them only inside
:func:`run_cell`, so that the import runs one way.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from slams.diffusion.sampler import SOLVERS
from slams.observations import Measurement

log = logging.getLogger(__name__)

# A zero observation variance makes the likelihood singular at t -> 0 (the gamma term vanishes);
# this floor keeps the guidance finite and is far below every variance of the ablation grid.
MIN_OBSERVATION_VARIANCE = 1e-3


@dataclass
class SamplerSettings:
    """Reverse-SDE sampler and likelihood guidance (config ``assimilation.sampler``).

    ``guidance``: ``sda`` (the paper's, with the ``gamma`` stability term) or ``mmps``
    (moment matching, its covariance solved by ``mmps_iterations`` iterations of
    ``mmps_solver``, GMRES or conjugate gradients; ``gamma`` unused).
    ``solver``: the predictor (:func:`slams.diffusion.sampler.sample`). ``correction_min_sigma``:
    corrections only at noise levels at least this. ``tau_reference_steps``: the Langevin step
    of a correction is ``tau * tau_reference_steps / steps`` (:attr:`step_tau`), so that the
    total Langevin time does not grow with the steps (``None``: ``tau`` per step, the paper's).
    ``correction_grid_steps``: corrections only where the steps reach the times of a grid of
    this many steps, so that more steps refine the predictor without adding corrections
    (``None``: after every step, the paper's); ``tau_reference_steps`` then scales by the
    grid's step count instead of ``steps``. ``eps_scale``: the predictor's epsilon scaling
    (beyond the paper; 1 is off), which widens any sampler's ensemble, so an inflation.
    """

    steps: int = 512
    corrections: int = 1
    tau: float = 0.5
    gamma: float = 1e-2
    guidance: str = "sda"
    mmps_iterations: int = 3
    mmps_solver: str = "gmres"
    solver: str = "ddim"
    correction_min_sigma: float = 0.0
    tau_reference_steps: int | None = None
    correction_grid_steps: int | None = None
    eps_scale: float = 1.0

    def __post_init__(self):
        if self.guidance not in ("sda", "mmps"):
            raise ValueError(f"guidance must be 'sda' or 'mmps', got {self.guidance!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not self.eps_scale > 0:
            raise ValueError(f"eps_scale must be > 0, got {self.eps_scale}")
        if self.tau_reference_steps is not None and self.tau_reference_steps < 1:
            raise ValueError(f"tau_reference_steps must be >= 1, got {self.tau_reference_steps}")
        if self.correction_grid_steps is not None and self.correction_grid_steps < 1:
            raise ValueError(
                f"correction_grid_steps must be >= 1, got {self.correction_grid_steps}"
            )

    @property
    def step_tau(self) -> float:
        """The Langevin step of one correction: ``tau``, or with ``tau_reference_steps`` set,
        ``tau * tau_reference_steps / steps``, so that the corrections' total Langevin time is
        that of ``tau_reference_steps`` steps whatever the step count; with
        ``correction_grid_steps = N`` as well, ``tau * tau_reference_steps / min(steps, N)``
        (the corrections are those of ``min(steps, N)`` steps)."""
        if self.tau_reference_steps is None:
            return self.tau
        corrected = self.steps
        if self.correction_grid_steps is not None:
            corrected = min(self.steps, self.correction_grid_steps)
        return self.tau * self.tau_reference_steps / corrected

    def sample_options(self) -> dict:
        """The keyword arguments of :func:`slams.diffusion.sample` that these settings set."""
        return {
            "steps": self.steps,
            "corrections": self.corrections,
            "tau": self.step_tau,
            "solver": self.solver,
            "correction_min_sigma": self.correction_min_sigma,
            "correction_grid_steps": self.correction_grid_steps,
            "eps_scale": self.eps_scale,
        }

    def make_guidance(self, observe, y: Tensor, variance: Tensor | float, mask=None, days=None):
        if self.guidance == "mmps":
            return MomentMatchingGuidance(
                observe, y, variance, mask, iterations=self.mmps_iterations,
                linear_solver=self.mmps_solver, days=days,
            )  # fmt: skip
        return GaussianGuidance(observe, y, variance, mask, gamma=self.gamma, days=days)


@dataclass
class Context:
    """What a method may use besides the observations: the trained models' files
    (``paths``), the dataset's statistics and the climatology of the assimilated days
    ``(T, L, H, W)`` in K, the sampler, ensemble and device; ``segment_days`` (``None``: the
    whole period in one pass; N: independent segments of N days), ``blanket_days`` (K, the
    days of one Markov-blanket window), ``windows_per_call`` (the most Markov-blanket windows
    per network call: memory only), ``decoder_error_in_likelihood`` and
    ``decoder_residuals_in_members`` (latent methods, see :mod:`slams.methods.latent`)."""

    paths: Mapping[str, str]
    stats: dict
    climatology_k: np.ndarray
    sampler: SamplerSettings
    members: int = 1
    segment_days: int | None = None
    blanket_days: int = 5
    windows_per_call: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    period: list[str] | None = None
    progress: bool = True
    decoder_error_in_likelihood: bool = True
    decoder_residuals_in_members: bool = True


def sampler_attrs(context: Context) -> dict:
    """The sampler settings an analysis file records (diffusion methods)."""
    sampler = context.sampler
    return {
        "segment_days": context.segment_days,
        "steps": sampler.steps,
        "corrections": sampler.corrections,
        "tau": sampler.tau,
        "gamma": sampler.gamma if sampler.guidance == "sda" else 0.0,
        "guidance": sampler.guidance,
        "solver": sampler.solver,
        "correction_min_sigma": sampler.correction_min_sigma,
        "tau_reference_steps": sampler.tau_reference_steps or 0,
        "correction_grid_steps": sampler.correction_grid_steps or 0,
        "step_tau": sampler.step_tau,
        "mmps_iterations": sampler.mmps_iterations if sampler.guidance == "mmps" else 0,
        "mmps_solver": sampler.mmps_solver if sampler.guidance == "mmps" else "",
        "eps_scale": sampler.eps_scale,
    }


def segment_slices(n_days: int, segment_days: int, min_days: int) -> list[slice]:
    """Cut ``n_days`` into consecutive segments of about ``segment_days``, none shorter than
    ``min_days`` (a short remainder is merged into the previous segment)."""
    if n_days < min_days:
        raise ValueError(
            f"the assimilation period has {n_days} days, fewer than the {min_days} days of one "
            "Markov-blanket window (score.blanket_days)"
        )
    bounds = [*range(0, n_days, segment_days), n_days]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_days:
        bounds.pop(-2)
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def segment_likelihood(observations, start: int, stop: int, state_fields: Callable):
    """``(observe, y, variance, mask, days)`` of the observed days of days ``start .. stop -
    1``, or ``None`` if none is observed there; ``days`` lists them (counted from ``start``),
    the only days ``observe`` reads.

    ``state_fields(x)`` maps a state of the observed days ``(B, n, C, H, W)`` to the full
    field of every observed quantity (``{"t": ..., "precip": ...}``, each ``(B, n, C_f, H,
    W)``); ``observe(x)`` takes a segment ``(B, L, C, H, W)`` to the flat vector of all
    observations ``(B, N)``, in the order of ``y``, ``variance`` and ``mask`` ``(N,)``. One
    Gaussian likelihood, every term with its own variance (floored at
    :data:`MIN_OBSERVATION_VARIANCE`).
    """
    local, fields = observations.segment(start, stop)
    if len(local) == 0 or not fields:
        return None
    names = list(fields)
    y = torch.cat([fields[n].values.flatten() for n in names])
    mask = torch.cat([fields[n].mask.flatten() for n in names])
    variance = torch.cat(
        [
            fields[n].variance.clamp(min=MIN_OBSERVATION_VARIANCE).expand_as(fields[n].values)
            .flatten()
            for n in names
        ]
    )  # fmt: skip
    operators = {n: fields[n].operator for n in names}

    def observe(x: Tensor) -> Tensor:
        full = state_fields(x[:, local])
        return torch.cat([operators[n](full[n]).flatten(1) for n in names], dim=1)

    return observe, y, variance, mask, local.tolist()


def assimilate_states(
    denoiser: MarkovBlanketDenoiser,
    observations,
    state_fields: Callable,
    state_shape: tuple[int, int, int],
    context: Context,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``context.members`` analyses of the whole period.

    ``observations`` holds the fields the method assimilates; ``state_fields`` maps states of
    the observed days to them (see :func:`segment_likelihood`). Returns ``(M, T, C, H, W)``
    in the state's units. By default (``context.segment_days`` 0 or ``None``) the whole period
    is one guided sampling of ``(M, T, C, H, W)`` through the Markov blanket, so that every
    observation reaches every day the prior links it to; with ``segment_days`` (the paper: 29)
    it is cut into segments sampled independently, each without the observations of the
    others. A segment without any observed day is sampled from the prior alone. ``generator``
    defaults to one seeded with ``context.seed + 1``.
    """
    sde = VPSDE()
    device = context.device
    settings = context.sampler
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(context.seed + 1)
    n_days = observations.observed.shape[0]
    slices = segment_slices(n_days, context.segment_days or n_days, denoiser.window)
    # the analysis itself, filled segment by segment (one pass: the sampler's own state)
    ensemble = None if len(slices) == 1 else torch.empty(context.members, n_days, *state_shape)
    for segment in slices:
        shape = (context.members, segment.stop - segment.start, *state_shape)
        likelihood = segment_likelihood(observations, segment.start, segment.stop, state_fields)
        if likelihood is None:
            eps_fn = denoiser
        else:
            observe, y, variance, mask, days = likelihood
            guidance = settings.make_guidance(
                observe, y.to(device), variance.to(device), mask.to(device), days
            )

            def eps_fn(x: Tensor, t: Tensor, guidance=guidance) -> Tensor:
                return guidance.guided_eps(denoiser, x, t, sde)

        x = sample(
            eps_fn,
            shape,
            sde,
            **settings.sample_options(),
            generator=generator,
            device=device,
            progress=context.progress,
        )
        if ensemble is None:
            return x.detach().cpu()
        ensemble[:, segment] = x.detach()
        del x
    return ensemble


def select_period(ds: xr.Dataset, period: list[str] | None) -> xr.Dataset:
    """The days of ``period`` (inclusive ``[first, last]``; ``None``: all) of a split file."""
    if period is None:
        return ds
    selected = ds.sel(time=slice(period[0], period[1]))
    if selected.sizes["time"] == 0:
        raise ValueError(
            f"assimilation.period {period[0]}..{period[1]} holds no day of the test split"
        )
    return selected


def analysis_dataset(
    analysis_k: np.ndarray,
    truth: xr.DataArray,
    observations: Mapping[str, xr.DataArray],
    observed: np.ndarray,
    attrs: dict,
) -> xr.Dataset:
    """The analysis file: ensemble and truth in kelvin, the observations the method used (see
    :func:`slams.observations.observation_variables`), CF attributes."""
    coords = {k: truth[k] for k in ("time", "level", "lat", "lon")}
    dims = ("time", "level", "lat", "lon")
    ds = xr.Dataset(coords=coords)
    ds["analysis"] = xr.DataArray(
        np.asarray(analysis_k, dtype=np.float32),  # no copy of a float32 ensemble
        dims=("member", *dims),
        coords={"member": np.arange(analysis_k.shape[0]), **coords},
        attrs={"units": "K", "long_name": "analysed air temperature (ensemble)"},
    )
    ds["truth"] = truth.astype(np.float32).assign_attrs(
        units="K", long_name="true air temperature (ERA5 or synthetic world)"
    )
    for name, variable in observations.items():
        ds[name] = variable
    ds["observed"] = xr.DataArray(
        observed.astype(np.int8), dims=("time",), attrs={"long_name": "day was observed"}
    )
    ds.attrs.update({"Conventions": "CF-1.8", **{k: _attr(v) for k, v in attrs.items()}})
    return ds


def _attr(value):
    return str(value) if isinstance(value, bool | type(None) | dict | list) else value


class AnalysisDiverged(FloatingPointError):
    """An analysis holds a NaN or an infinity: the sampler diverged."""


def check_finite(analysis: np.ndarray, times: np.ndarray, cell: str) -> None:
    """Raise :class:`AnalysisDiverged` in one line naming the cell, the first member and day
    that are not finite, so a diverged member fails its job instead of being scored."""
    # a member at a time: the ensemble's worth of booleans would be a quarter of its size
    for member, values in enumerate(analysis):
        bad = ~np.isfinite(values)
        if bad.any():
            day = np.argwhere(bad)[0][0]
            count = sum(int((~np.isfinite(m)).sum()) for m in analysis)
            date = np.datetime_as_string(times[day], unit="D") if len(times) > day else day
            raise AnalysisDiverged(
                f"{cell}: member {member}, day {date} is not finite ({count} values in "
                "all); the sampler diverged: try more steps, or larger observation variances"
            )


NOISE_UNITS = {
    "physical": (
        "temperature: variance in the paper's units (the full field standardised per level); "
        "precipitation (log1p) and OLR: variance of the standardised field"
    ),
    "paper": (
        "variance in standardised units of the observed space (pixel: the full field "
        "standardised per level, as in the paper; latent: the standardised latent code)"
    ),
}


def run_cell(
    protocol: str,
    method: str,
    axis: str,
    value: str,
    measurement_params: dict,
    assimilation: dict,
    blanket_days: int,
    paths: dict,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Assimilate the test period with one method in one setting under one protocol.

    ``paths`` holds ``test``, ``stats``, ``climatology`` and what the method's family reads
    (``score``, ``autoencoder``, ``latent_stats``, ``validation`` and, under ``paper``,
    ``latents``; ``background``): :func:`slams.paths.cell_paths`. ``assimilation`` holds
    ``members``, ``segment_days``, ``windows_per_call``, ``sampler``, ``period``,
    ``observation_variance`` (precipitation and OLR under ``physical``),
    ``decoder_error_in_likelihood`` (latent methods under ``physical``) and
    ``decoder_residuals_in_members`` (latent methods). ``blanket_days``: the score networks'
    K (``score.blanket_days``).
    """
    from slams.data.dataset import climatology_of, from_anomaly, load_stats
    from slams.methods import METHODS, family, observed_fields
    from slams.models import resolve_device, states_of
    from slams.observations import build_observations, observation_variables

    spec = METHODS[method]
    if protocol not in spec.protocols:
        raise ValueError(f"method {method} is not defined under the {protocol} protocol")
    module = family(method)
    measurement = Measurement.from_params(measurement_params)
    context = Context(
        paths=paths,
        stats=load_stats(paths["stats"]),
        climatology_k=np.empty(0),
        sampler=SamplerSettings(**assimilation.get("sampler", {})),
        members=int(assimilation.get("members", 1)),
        segment_days=assimilation.get("segment_days"),
        windows_per_call=assimilation.get("windows_per_call"),
        blanket_days=blanket_days,
        device=resolve_device(device),
        seed=seed,
        period=assimilation.get("period"),
        progress=progress,
        decoder_error_in_likelihood=bool(assimilation.get("decoder_error_in_likelihood", True)),
        decoder_residuals_in_members=bool(assimilation.get("decoder_residuals_in_members", True)),
    )
    with xr.open_dataset(paths["test"]) as test:
        split = select_period(test, context.period).load()
    with xr.open_dataset(paths["climatology"]) as climatology:
        context.climatology_k = climatology_of(climatology, split["time"]).values
    truth_k = (
        split["t"]
        .transpose("time", "level", "lat", "lon")
        .copy(data=from_anomaly(states_of(split, ["t"]).numpy(), context.climatology_k,
                                context.stats))
    )  # fmt: skip
    latents = None
    if protocol == "paper" and hasattr(module, "paper_latents"):
        latents = module.paper_latents(method, context)
    used = observed_fields(method, protocol)
    observations = build_observations(
        protocol,
        split,
        measurement,
        context.stats,
        seed,
        variances=assimilation.get("observation_variance"),
        latents=latents,
        fields=used,
    )
    analysis_k, extra = module.analyse(method, observations.select(used), context)
    check_finite(np.asarray(analysis_k), split["time"].values, f"{method} {axis}-{value} "
                 f"({protocol} protocol)")  # fmt: skip
    attrs = {
        "protocol": protocol,
        "method": method,
        "axis": axis,
        "value": float(value),
        "coarsen": measurement.coarsen,
        "gap": measurement.gap,
        "noise_variance": measurement.noise,
        "observe_every_days": measurement.every,
        "members": context.members,
        "seed": seed,
        "observations": ",".join(used) if used else "none",
        "noise_units": NOISE_UNITS[protocol],
        "state": "standardised anomaly about the day-of-year climatology of the training years",
        **extra,
    }
    if protocol == "physical":
        for name, variance in (assimilation.get("observation_variance") or {}).items():
            if name in used:
                attrs[f"{name}_variance"] = float(variance)
    coords = {k: split[k] for k in ("time", "level", "lat", "lon")}
    variables = observation_variables(
        observations.select(used), coords, context.climatology_k, context.stats
    )
    log.info(
        "%s %s %s-%s: %d members x %d days, observing %s",
        protocol, method, axis, value, *analysis_k.shape[:2], attrs["observations"],
    )  # fmt: skip
    return analysis_dataset(
        np.asarray(analysis_k), truth_k, variables, observations.observed.numpy(), attrs
    )


def relabel_copy(
    source: str | Path,
    target: str | Path,
    axis: str,
    value: str | float,
    protocol: str | None = None,
) -> None:
    """Copy an analysis to the name of another cell with the same observations.

    Only the global ``axis``, ``value`` and ``protocol`` attributes change;
    ``same_setting_as`` names the source cell (``<axis>-<value>``) and, if it is filed under
    another protocol, ``same_analysis_as`` its protocol too. The data are copied byte for
    byte, without reading them into memory.
    """
    import netCDF4

    shutil.copyfile(source, target)
    with netCDF4.Dataset(target, "a") as nc:
        attrs = nc.ncattrs()
        original = f"{nc.getncattr('axis')}-{format_value(nc.getncattr('value'))}"
        source_protocol = nc.getncattr("protocol") if "protocol" in attrs else None
        nc.setncattr("axis", axis)
        nc.setncattr("value", float(value))
        if original != f"{axis}-{format_value(float(value))}":
            nc.setncattr("same_setting_as", original)
        if protocol is not None and protocol != source_protocol:
            nc.setncattr("protocol", protocol)
            nc.setncattr("same_analysis_as", f"{source_protocol}/{original}")


def assimilate_case(
    run: str | Path,
    config: dict,
    protocol: str,
    method: str,
    case: str,
    assimilation: dict,
    seed: int | None = None,
) -> xr.Dataset:
    """Assimilate the named ``case`` of ``config`` (``assimilation.cases``) again with
    ``method`` under ``protocol``, on the networks of the finished run ``run`` (its folder,
    e.g. ``results/demo``), with the ``assimilation`` section given (a variant of the config's;
    its ``sampler_by_space``, if any, applied); returns the analysis dataset. ``case`` may
    also be a cell of the grid itself, as ``axis-value`` (``gap-2``). ``seed`` (default: the
    config's) draws the observations' noise and the sampler's. For the studies and benchmarks
    that rerun a finished run's cells with other settings."""
    from slams.config import method_assimilation, setting_parameters
    from slams.paths import cell_paths

    cell = config["assimilation"]["cases"].get(case, case)
    if "-" not in cell or cell.split("-", 1)[0] not in config["assimilation"]["axes"]:
        named = ", ".join(config["assimilation"]["cases"])
        raise ValueError(f"unknown case {case!r}: a named case ({named}) or a cell as axis-value")
    axis, value = cell.split("-", 1)
    section = method_assimilation(assimilation, method)
    return run_cell(
        protocol,
        method,
        axis,
        value,
        setting_parameters(config, axis, float(value)),
        section,
        config["score"]["blanket_days"],
        cell_paths(run, method, protocol, section),
        seed=config["seed"] if seed is None else seed,
        progress=False,
    )
