"""Small files in the real sources' formats, for the download and regridding tests.

- CPC (NOAA PSL ``precip.YYYY.nc``): ``precip`` float32 in "mm", dims ``(time, lat, lon)``,
  0.5 degree cell centres, lat descending 89.75..-89.75, lon 0.25..359.75, ocean missing as
  ``_FillValue = missing_value = -9.96921e36``, time in hours since 1900-01-01.
- OLR (NOAA PSL ``interp_OLR/olr.day.mean.nc``, all years in one file): ``olr`` in "W/m^2",
  2.5 degree node grid, lat descending 90..-90, lon 0..357.5, time in hours since 1800-01-01;
  either packed shorts (``scale_factor`` 0.01, ``add_offset`` 327.65, the classic layout) or
  deflated float32 (the layout since NOAA's 2020 conversion), ``missing_value`` 32766.
- ERA5 as the CDS delivers netCDF today: ``t`` float32 in K, dims ``(valid_time,
  pressure_level, latitude, longitude)``, latitude descending with the poles, a scalar
  ``number`` coordinate, valid_time in seconds since 1970-01-01.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

CPC_FILL = np.float32(-9.96921e36)


def smooth(lat: np.ndarray, lon: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A smooth field (n, lat, lon) of order one, different on each day."""
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    shifts = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    return np.stack(
        [np.cos(phi) ** 2 + 0.3 * np.cos(phi) * np.sin(2 * lam + shift) for shift in shifts]
    )


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """'Land' (True) on two blocks, the rest 'ocean': (lat, lon)."""
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    return ((lon2 > 0) & (lon2 < 60) & (lat2 > -35) & (lat2 < 40)) | (
        (lon2 > 230) & (lon2 < 300) & (lat2 > 10) & (lat2 < 60)
    )


def cpc_grid(resolution: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    lat = np.arange(90 - resolution / 2, -90, -resolution)
    lon = np.arange(resolution / 2, 360, resolution)
    return lat, lon


def write_cpc(path: Path, days: pd.DatetimeIndex, value: float | None = None) -> np.ndarray:
    """A CPC-format file; land holds ``value`` (or a smooth field >= 0), ocean is missing.

    Returns the written values (days, lat, lon) with NaN over the ocean.
    """
    lat, lon = cpc_grid()
    values = (
        5.0 * smooth(lat, lon, len(days))
        if value is None
        else np.full((len(days), lat.size, lon.size), value)
    )
    values = np.where(land_mask(lat, lon)[None], values, np.nan).astype(np.float32)
    ds = xr.Dataset(
        {
            "precip": (
                ("time", "lat", "lon"),
                values,
                {"units": "mm", "long_name": "Daily total of precipitation"},
            )
        },
        coords={
            "time": days,
            "lat": ("lat", lat.astype(np.float32), {"units": "degrees_north"}),
            "lon": ("lon", lon.astype(np.float32), {"units": "degrees_east"}),
        },
    )
    encoding = {
        "precip": {
            "dtype": "float32",
            "zlib": True,
            "_FillValue": CPC_FILL,
            "missing_value": CPC_FILL,
        },
        "time": {"units": "hours since 1900-01-01 00:00:00", "dtype": "float64"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=encoding)
    return values


def olr_grid(resolution: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(90, -90, round(180 / resolution) + 1), np.arange(0, 360, resolution)


def write_olr(
    path: Path,
    days: pd.DatetimeIndex,
    packed: bool = True,
    resolution: float = 2.5,
    file_format: str = "NETCDF4",
) -> np.ndarray:
    """An OLR-format file (every day of ``days`` in one file); returns the values in W m-2.
    ``file_format="NETCDF3_CLASSIC"`` writes it as NOAA PSL serves the packed file: netCDF-3
    classic, time the record (unlimited) dimension."""
    lat, lon = olr_grid(resolution)
    values = (200.0 + 60.0 * smooth(lat, lon, len(days), seed=1)).astype(np.float32)
    ds = xr.Dataset(
        {
            "olr": (
                ("time", "lat", "lon"),
                values,
                {"units": "W/m^2", "long_name": "Daily OLR"},
            )
        },
        coords={
            "time": days,
            "lat": ("lat", lat.astype(np.float32), {"units": "degrees_north"}),
            "lon": ("lon", lon.astype(np.float32), {"units": "degrees_east"}),
        },
        attrs={"title": "Daily Mean Interpolated OLR"},
    )
    if packed:
        encoding = {
            "dtype": "int16",
            "scale_factor": 0.01,
            "add_offset": 327.65,
            "_FillValue": np.int16(32766),
            "missing_value": np.int16(32766),
        }
    else:
        encoding = {"dtype": "float32", "zlib": True, "missing_value": np.float32(32766)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_format != "NETCDF4":
        encoding = {k: v for k, v in encoding.items() if k != "zlib"}
    ds.to_netcdf(
        path,
        engine="netcdf4",
        format=file_format,
        unlimited_dims=["time"] if file_format != "NETCDF4" else None,
        encoding={
            "olr": encoding,
            "time": {"units": "hours since 1800-01-01 00:00:0.0", "dtype": "float64"},
        },
    )
    return values


def era5_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(90, -90, round(180 / resolution) + 1), np.arange(0, 360, resolution)


def era5_values(days: pd.DatetimeIndex, levels: list[float], resolution: float) -> np.ndarray:
    """Deterministic temperatures (days, levels, lat, lon), K, depending on the date."""
    lat, lon = era5_grid(resolution)
    base = smooth(lat, lon, 1)[0]
    doy = days.day_of_year.to_numpy()[:, None, None, None]
    level = np.asarray(levels, dtype=np.float64)[None, :, None, None]
    return (200.0 + 0.08 * level + 20.0 * base[None, None] + 0.01 * doy).astype(np.float32)


def write_era5(
    path: Path, days: pd.DatetimeIndex, levels: list[float], resolution: float = 10.0
) -> np.ndarray:
    """A CDS-style ERA5 netCDF (levels in the order given); returns the values written."""
    lat, lon = era5_grid(resolution)
    values = era5_values(days, levels, resolution)
    ds = xr.Dataset(
        {
            "t": (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                values,
                {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"},
            )
        },
        coords={
            "valid_time": days,
            "pressure_level": ("pressure_level", np.asarray(levels, float), {"units": "hPa"}),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
            "number": 0,
        },
        attrs={"GRIB_centre": "ecmf", "Conventions": "CF-1.7"},
    )
    encoding = {
        "t": {"dtype": "float32", "zlib": True},
        "valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=encoding)
    return values
