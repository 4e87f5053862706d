"""Open raw source files in a standard form and regrid them conservatively to the target grid.

Conservative regridding of a regular lat-lon field ``x_s`` (source cells ``s``) to target
cells ``t`` on the sphere is separable: the overlap area of two cells is

    A_ts = [sin(phi) overlap of the rows] * [longitude overlap of the columns, periodic]

so with ``W_lat (n_lat_t, n_lat_s)`` and ``W_lon (n_lon_t, n_lon_s)`` the target value is

    x_t = sum_s A_ts v_s x_s / sum_s A_ts v_s = (W_lat (v x) W_lon^T) / (W_lat v W_lon^T)

where ``v_s`` is 1 for a valid (finite) source value and 0 for a missing one. A target cell is
NaN when its valid fraction ``sum_s A_ts v_s / area_t`` is below ``min_valid_fraction``.
With no missing values the area-weighted global mean is conserved exactly (the source cells'
areas are split among the target cells without loss).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from slams.grid import cell_edges, target_grid

logger = logging.getLogger(__name__)

# source -> (variable name, standard units, units accepted in raw files, long name)
SOURCES: dict[str, tuple[str, str, frozenset[str], str]] = {
    "era5": ("t", "K", frozenset({"K", "kelvin"}), "temperature"),
    # CPC stores daily totals with units "mm": a daily total is a rate in mm/day.
    "cpc": (
        "precip",
        "mm/day",
        frozenset({"mm", "mm/day", "mm day-1", "mm d-1", "mm/d"}),
        "daily precipitation",
    ),
    "olr": (
        "olr",
        "W m-2",
        frozenset({"W/m^2", "W m-2", "W/m2", "W m**-2", "w/m^2"}),
        "outgoing longwave radiation",
    ),
}
_RENAME = {
    "valid_time": "time",
    "pressure_level": "level",
    "plev": "level",
    "latitude": "lat",
    "longitude": "lon",
}
# Values handled at once by conservative_regrid (bounds memory for large sources).
_CHUNK_VALUES = 2**25


def check_times(times: pd.DatetimeIndex, units: str = "") -> None:
    """Raise a one-line ValueError unless ``times`` increase strictly; a record dated at the
    time origin (a time value of 0, what a zero-filled or corrupt record holds) is named as
    such."""
    if len(times) < 2:
        return
    steps = np.diff(times.values)
    bad = np.flatnonzero(steps <= np.timedelta64(0, "ns"))
    if not bad.size:
        return
    i = int(bad[0]) + 1
    origin = units.partition(" since ")[2].strip()
    at_origin = bool(origin) and times[i] == pd.Timestamp(origin.split()[0])
    cause = (
        f"dated at the time origin ({times[i].date()}, time value 0: a zero-filled or corrupt "
        "record)"
        if at_origin
        else f"dated {times[i]}, not after record {i - 1} ({times[i - 1]})"
    )
    raise ValueError(f"time not increasing: record {i} of {len(times)} is {cause}")


def open_source(path: str | Path, source: str) -> xr.DataArray:
    """Open a raw ``era5`` | ``cpc`` | ``olr`` file and return it in standard form.

    Returns the variable ``t`` | ``precip`` | ``olr`` with dims ``(time[, level], lat, lon)``:
    lat ascending, lon in [0, 360) ascending, level in hPa ascending, time floored to the day,
    float32 with NaN for missing values (packed ints, ``_FillValue`` and ``missing_value`` are
    decoded by xarray), units attribute "K" | "mm/day" | "W m-2". Values are read lazily:
    the file stays open until the array is loaded or closed.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}': expected one of {sorted(SOURCES)}")
    name, units, accepted_units, long_name = SOURCES[source]
    ds = xr.open_dataset(path, engine="netcdf4", mask_and_scale=True)
    if name not in ds:
        raise ValueError(f"{path}: no variable '{name}' for source {source} (has {list(ds)})")
    da = ds[name]
    raw_units = da.attrs.get("units", "")
    if raw_units not in accepted_units:
        raise ValueError(
            f"{path}: units '{raw_units}' of '{name}' not understood for {source} "
            f"(expected one of {sorted(accepted_units)})"
        )
    da = da.rename({k: v for k, v in _RENAME.items() if k in da.dims or k in da.coords})
    da = da.reset_coords(drop=True)  # e.g. ERA5's "number" and "expver"
    dims = ("time", "level", "lat", "lon") if source == "era5" else ("time", "lat", "lon")
    if set(da.dims) != set(dims):
        raise ValueError(f"{path}: dims {da.dims} of '{name}', expected {dims} after renaming")
    da = da.transpose(*dims)

    if "level" in da.dims and (da["level"].attrs.get("units") == "Pa" or da["level"].max() > 1100):
        da = da.assign_coords(level=da["level"] / 100.0)  # Pa -> hPa
    da = da.assign_coords(lon=np.mod(da["lon"].values.astype(np.float64), 360.0))
    check_times(da.indexes["time"], da["time"].encoding.get("units", ""))
    days = da.indexes["time"].floor("D")
    if days.has_duplicates:
        first = days[days.duplicated()][0]
        raise ValueError(
            f"several time steps on {first.date()} ({days.duplicated().sum()} in all): daily "
            "data expected"
        )
    da = da.assign_coords(time=days)
    da = da.sortby([d for d in dims if d != "time"])
    _, first = np.unique(da["lon"].values, return_index=True)
    if first.size < da.sizes["lon"]:  # a grid with both -180 and 180 (or 0 and 360)
        da = da.isel(lon=np.sort(first))
    if da.dtype != np.float32:  # astype loads the data: skip it when already float32
        da = da.astype(np.float32)
    da.name = name
    da.attrs = {"units": units, "long_name": long_name, "source": source}
    da["lat"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    da["lon"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    if "level" in da.dims:
        da["level"].attrs = {"units": "hPa", "long_name": "pressure level"}
    return da


def _latitude_overlap(source_lat: np.ndarray, target_lat: np.ndarray) -> np.ndarray:
    """``W_lat (n_target, n_source)``: overlap of the rows in ``sin(lat)`` (area / 2 pi R^2).

    Edges are midpoints clipped to [-90, 90], so node grids with pole rows get pole half cells.
    """
    src = np.sin(np.deg2rad(cell_edges(source_lat, -90.0, 90.0)))
    dst = np.sin(np.deg2rad(cell_edges(target_lat, -90.0, 90.0)))
    src_lo, src_hi = np.minimum(src[:-1], src[1:]), np.maximum(src[:-1], src[1:])
    dst_lo, dst_hi = np.minimum(dst[:-1], dst[1:]), np.maximum(dst[:-1], dst[1:])
    upper = np.minimum(dst_hi[:, None], src_hi[None, :])
    lower = np.maximum(dst_lo[:, None], src_lo[None, :])
    return np.clip(upper - lower, 0.0, None)


def _periodic_edges(lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """West and east edges of cells around ascending ``lon`` in [0, 360) on the circle."""
    gaps = np.diff(np.append(lon, lon[0] + 360.0))  # gap after each centre, wrapping
    return lon - 0.5 * np.roll(gaps, 1), lon + 0.5 * gaps


def _longitude_overlap(source_lon: np.ndarray, target_lon: np.ndarray) -> np.ndarray:
    """``W_lon (n_target, n_source)``: overlap in degrees of the columns, periodic in 360."""
    src_w, src_e = _periodic_edges(source_lon)
    dst_w, dst_e = _periodic_edges(target_lon)
    overlap = np.zeros((target_lon.size, source_lon.size))
    for shift in (-360.0, 0.0, 360.0):  # cells are < 360 wide: one wrap either way suffices
        upper = np.minimum(dst_e[:, None], src_e[None, :] + shift)
        lower = np.maximum(dst_w[:, None], src_w[None, :] + shift)
        overlap += np.clip(upper - lower, 0.0, None)
    return overlap


def _apply(weights_lat: np.ndarray, values: np.ndarray, weights_lon_t: np.ndarray) -> np.ndarray:
    """``W_lat x W_lon^T`` for a stack ``x`` (n, lat_s, lon_s) -> (n, lat_t, lon_t)."""
    n, n_lat, n_lon = values.shape
    # One 2-D product over all rows (a stacked 3-D @ 2-D matmul is much slower in numpy).
    by_lon = (values.reshape(n * n_lat, n_lon) @ weights_lon_t).reshape(n, n_lat, -1)
    return weights_lat @ by_lon


def conservative_regrid(
    da: xr.DataArray, lat: np.ndarray, lon: np.ndarray, min_valid_fraction: float = 0.5
) -> xr.DataArray:
    """First-order conservative, NaN-aware regridding of ``da`` (..., lat, lon) to ``(lat, lon)``.

    ``x_t = (W_lat (v x) W_lon^T) / (W_lat v W_lon^T)`` (see the module docstring): each target
    cell is the area-weighted mean of the valid source area it overlaps; NaN where the valid
    fraction of its area is below ``min_valid_fraction`` (or nothing valid overlaps it).
    Source and target are regular or irregular lat-lon grids with any lat order and lon in any
    360-degree range. Returns float32 with dims ``(..., lat, lon)``, target coords ascending
    as given, and the other dims, coords and attrs of ``da``.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    if np.any(np.diff(lon) <= 0):
        raise ValueError("target longitudes must be strictly ascending within one 360° turn")
    other = [d for d in da.dims if d not in ("lat", "lon")]
    da = da.transpose(*other, "lat", "lon")
    da = da.assign_coords(lon=np.mod(da["lon"].values.astype(np.float64), 360.0)).sortby("lon")
    weights_lat = _latitude_overlap(da["lat"].values.astype(np.float64), lat)
    weights_lon_t = _longitude_overlap(da["lon"].values, lon).T.copy()  # (n_source, n_target)
    # Target cell areas (same units as the overlaps) and the part of them the source covers.
    row_area = np.abs(np.diff(np.sin(np.deg2rad(cell_edges(lat, -90.0, 90.0)))))
    west, east = _periodic_edges(lon)
    target_area = row_area[:, None] * (east - west)[None, :]
    covered = weights_lat.sum(axis=1)[:, None] * weights_lon_t.sum(axis=0)[None, :]

    shape = tuple(da.sizes[d] for d in other)
    n_source = da.sizes["lat"] * da.sizes["lon"]
    out = np.empty((int(np.prod(shape)), lat.size, lon.size), np.float32)
    # Read and regrid a block of the leading dim at a time: lazy sources are loaded here.
    lead = other[0] if other else None
    per_lead = int(np.prod(shape[1:]))
    lead_step = max(1, _CHUNK_VALUES // (per_lead * n_source))
    for start in range(0, shape[0] if lead else 1, lead_step):
        block = da.isel({lead: slice(start, start + lead_step)}) if lead else da
        values = np.asarray(block.values, dtype=np.float64).reshape(-1, *da.shape[-2:])
        valid = np.isfinite(values)
        if valid.all():
            valid_area = covered
            numerator = _apply(weights_lat, values, weights_lon_t)
        else:
            numerator = _apply(weights_lat, np.where(valid, values, 0.0), weights_lon_t)
            valid_area = _apply(weights_lat, valid.astype(np.float64), weights_lon_t)
        # The small slack keeps fully covered cells valid at min_valid_fraction = 1 (rounding).
        enough = (valid_area > 0) & (valid_area >= (min_valid_fraction - 1e-9) * target_area)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(enough, numerator / valid_area, np.nan)
        out[start * per_lead : start * per_lead + len(result)] = result

    coords = {
        name: coord for name, coord in da.coords.items() if not {"lat", "lon"} & set(coord.dims)
    }
    coords["lat"] = ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"})
    coords["lon"] = ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})
    return xr.DataArray(
        out.reshape(*shape, lat.size, lon.size),
        dims=(*other, "lat", "lon"),
        coords=coords,
        name=da.name,
        attrs=dict(da.attrs),
    )


def _bounds(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """Centres and edges of an ascending regular lat-lon grid, as xESMF reads them.

    Latitude edges are the midpoints clipped to [-90, 90] (pole half cells, as in the builtin
    regridder); longitude edges are periodic, west of the first to east of the last cell.
    """
    west, east = _periodic_edges(lon)
    return xr.Dataset(
        coords={
            "lat": ("lat", lat),
            "lon": ("lon", lon),
            "lat_b": ("lat_b", cell_edges(lat, -90.0, 90.0)),
            "lon_b": ("lon_b", np.append(west, east[-1])),
        }
    )


def xesmf_regrid(
    da: xr.DataArray, lat: np.ndarray, lon: np.ndarray, min_valid_fraction: float = 0.5
) -> xr.DataArray:
    """First-order conservative regridding with xESMF (ESMF), same contract as the builtin.

    ``da`` (time, [level,] lat, lon) from :func:`open_source` (lat ascending, lon in [0, 360)).
    ESMF's conservative weights with ``skipna=True``: each target cell is the mean over the
    valid part of the source area it overlaps, NaN where more than ``1 - min_valid_fraction``
    of it is missing (``na_thres``). The weights are computed once per call and applied to
    blocks of days, so memory does not grow with the length of the file.
    """
    import xesmf

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    source = _bounds(da["lat"].values.astype(np.float64), da["lon"].values.astype(np.float64))
    regridder = xesmf.Regridder(source, _bounds(lat, lon), method="conservative")
    other = [d for d in da.dims if d not in ("lat", "lon")]
    per_day = int(np.prod([da.sizes[d] for d in other[1:]])) * da.sizes["lat"] * da.sizes["lon"]
    step = max(1, _CHUNK_VALUES // per_day)
    blocks = []
    for start in range(0, da.sizes[other[0]], step):
        block = da.isel({other[0]: slice(start, start + step)}).load()
        # xESMF warns (and slows down) on non-C-contiguous input: open_source's latitude flip
        # leaves a negative stride
        block = block.copy(data=np.ascontiguousarray(block.values))
        out = regridder(block, skipna=True, na_thres=1.0 - min_valid_fraction, keep_attrs=True)
        blocks.append(out.astype(np.float32))
    out = xr.concat(blocks, dim=other[0]).transpose(*other, "lat", "lon")
    out = out.assign_coords(lat=("lat", lat), lon=("lon", lon))
    out["lat"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    out["lon"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    out.name, out.attrs = da.name, dict(da.attrs)
    return out


BACKENDS = ("builtin", "xesmf")


def check_backend(backend: str) -> None:
    """Raise a one-line error for an unknown backend, or for 'xesmf' when it does not import."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown regrid backend '{backend}': use 'builtin' or 'xesmf'")
    if backend == "xesmf":
        try:
            import xesmf  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"regrid backend 'xesmf' needs xesmf, which does not import here ({error}): "
                "run with --sdm conda (envs/data.yaml installs it from conda-forge) or set "
                "data.regrid_backend: builtin"
            ) from None


def regrid_file(
    src_path: str | Path,
    dst_path: str | Path,
    source: str,
    resolution: float,
    backend: str = "builtin",
) -> None:
    """``open_source`` + conservative regridding to ``target_grid(resolution)`` + write netCDF.

    ``backend``: ``"builtin"`` (:func:`conservative_regrid`, numpy only) or ``"xesmf"``
    (:func:`xesmf_regrid`, ESMF from conda-forge); both are first-order conservative and
    NaN-aware for every source, OLR included (a flux whose area integral is kept).
    The output holds one float32 variable (``t`` | ``precip`` | ``olr``) with dims
    ``(time[, level], lat, lon)``, zlib-compressed, NaN kept as missing.
    """
    check_backend(backend)
    regrid = conservative_regrid if backend == "builtin" else xesmf_regrid
    lat, lon = target_grid(resolution)
    started = time.monotonic()
    da = open_source(src_path, source)
    days = da.indexes["time"]
    logger.info(
        "%s (%s): %d days %s..%s%s, %d x %d grid (%.4g..%.4g N, %.4g..%.4g E)",
        src_path,
        source,
        len(days),
        days[0].date(),
        days[-1].date(),
        f", {da.sizes['level']} levels" if "level" in da.dims else "",
        da.sizes["lat"],
        da.sizes["lon"],
        float(da["lat"].min()),
        float(da["lat"].max()),
        float(da["lon"].min()),
        float(da["lon"].max()),
    )
    try:
        regridded = regrid(da, lat, lon)
    finally:
        da.close()
    missing = float(np.isnan(regridded.values).mean())
    ds = regridded.to_dataset()
    ds.attrs = {
        "Conventions": "CF-1.8",
        "regridding": f"first-order conservative to {resolution} degree cell centres ({backend})",
    }
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    encoding = {
        regridded.name: {"dtype": "float32", "zlib": True, "complevel": 1, "_FillValue": np.nan}
    }
    ds.to_netcdf(dst_path, engine="netcdf4", format="NETCDF4", encoding=encoding)
    logger.info(
        "wrote %s: %d x %d grid of %g degree cells (%s backend), %.1f %% missing, %.1f s",
        dst_path,
        lat.size,
        lon.size,
        resolution,
        backend,
        100 * missing,
        time.monotonic() - started,
    )
