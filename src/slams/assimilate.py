"""Assimilation: one ensemble analysis of the test period per protocol, method and setting.

:func:`run_cell` builds the setting's :class:`~slams.observations.Observations` once, hands
them to the method's family (:mod:`slams.methods`) and writes what comes back, an ensemble in
kelvin, with the truth and every observation the method used. The diffusion methods share
:func:`slams.sampling.assimilate_states` (the machinery below every family, so that the
dependency runs one way: assimilate -> methods -> sampling).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from slams.config import format_value
from slams.observe import Measurement
from slams.sampling import Context, SamplerSettings, select_period

log = logging.getLogger(__name__)


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
    window: int,
    paths: dict,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Assimilate the test period with one method in one setting under one protocol.

    ``paths`` holds ``test``, ``stats``, ``climatology`` and what the method's family reads
    (``score``, ``autoencoder``, ``latent_stats``, ``validation`` and, under ``paper``,
    ``latents``; ``background``). ``assimilation`` holds ``members``, ``window_days``,
    ``sampler``, ``period``, ``observation_variance`` (precipitation and OLR under ``physical``)
    ``decoder_error`` (latent methods under ``physical``) and ``decoder_residuals`` (latent
    methods).
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
        window_days=assimilation.get("window_days"),
        chunk=assimilation.get("chunk_windows"),
        window=window,
        device=resolve_device(device),
        seed=seed,
        period=assimilation.get("period"),
        progress=progress,
        decoder_error=bool(assimilation.get("decoder_error", True)),
        decoder_residuals=bool(assimilation.get("decoder_residuals", True)),
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


def background_of(
    train_path: str,
    rank: int,
    seed: int = 0,
    progress: bool = True,
    variables: tuple[str, ...] = ("t",),
):
    """The OI background covariance of the training days (see :mod:`slams.baselines`),
    streamed from the training split: of the temperature anomaly, or of the joint stack of
    ``variables`` (``oi-both``: temperature anomaly levels, standardised precipitation and
    OLR, stacked on channels in that order)."""
    from slams.baselines import estimate_background
    from slams.data.samples import NetCDFSamples

    samples = NetCDFSamples(train_path, list(variables), np.arange(0))
    n_days = samples.n_days
    shape = (samples.channels, *samples.grid)

    def days():
        for start in range(0, n_days, 64):
            count = min(64, n_days - start)
            yield torch.from_numpy(samples.read(start, count))

    return estimate_background(days, n_days, shape, rank, seed=seed, progress=progress)
