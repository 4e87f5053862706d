"""Small analysis files in the workflow's format, for the evaluation and figure tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

RESOLUTION = 11.25  # 16 x 32 cell-centred grid
LAT = np.arange(-90 + RESOLUTION / 2, 90, RESOLUTION)
LON = np.arange(RESOLUTION / 2, 360, RESOLUTION)
LEVELS = [50.0, 200.0, 850.0, 1000.0]


def analysis_dataset(
    method: str,
    axis: str = "coarsen",
    value: float = 4.0,
    n_members: int = 3,
    n_days: int = 6,
    every: int = 2,
    error: float = 1.0,
    seed: int = 0,
    protocol: str = "physical",
) -> xr.Dataset:
    """An analysis file's dataset: truth ~ 250 K with a latitude gradient, members = truth +
    ``error`` noise, an observation of every ``every``-th day (NaN elsewhere), attributes.
    The truth is the same for every method and seed (``seed`` draws the members)."""
    shape = (n_days, len(LEVELS), LAT.size, LON.size)
    weather = np.random.default_rng(12345).normal(size=shape)
    truth = 250.0 + 30.0 * np.cos(np.deg2rad(LAT))[:, None] + 3.0 * weather
    rng = np.random.default_rng(seed)
    members = truth + error * rng.normal(size=(n_members, *shape))
    observed = (np.arange(n_days) % every == 0).astype(np.int8)
    observation = truth + 0.5 * rng.normal(size=shape)
    observation[observed == 0] = np.nan
    time = pd.date_range("2004-01-01", periods=n_days)
    coords = {"time": time, "level": LEVELS, "lat": LAT, "lon": LON}
    dims = ("time", "level", "lat", "lon")
    ds = xr.Dataset(
        {
            "analysis": (("member", *dims), members.astype(np.float32), {"units": "K"}),
            "truth": (dims, truth.astype(np.float32), {"units": "K"}),
            "observation": (dims, observation.astype(np.float32), {"units": "K"}),
            "observed": (("time",), observed),
        },
        coords={"member": np.arange(n_members), **coords},
    )
    ds.attrs.update(
        protocol=protocol,
        method=method,
        axis=axis,
        value=float(value),
        coarsen=int(value) if axis == "coarsen" else 1,
        gap=int(value) if axis == "gap" else 1,
        noise_variance=float(value) if axis == "noise" else 0.1,
        members=n_members,
    )
    return ds


def write_analysis(root: Path, method: str, axis: str, value: float, **kwargs) -> Path:
    """Write :func:`analysis_dataset` to ``root/<method>/<axis>-<value>.nc``; return the path."""
    path = Path(root) / method / f"{axis}-{value:g}.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    analysis_dataset(method, axis, value, **kwargs).to_netcdf(path)
    return path
