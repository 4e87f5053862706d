"""Build the normalised train/validation/test datasets, statistics and climatology.

Inputs are the regridded per-year files (``t`` (time, level, lat, lon) in K, ``precip``
(time, lat, lon) in mm/day, ``olr`` (time, lat, lon) in W m-2, all on one target grid).
Outputs in ``out_dir``:

- ``{split}.nc``: float32 ``t`` as standardised anomalies,
  ``x_n = (x - climatology(dayofyear)) / anomaly_std_level`` (beyond the paper, which
  standardises the full field: the prior then learns departures from the seasonal cycle, and
  where observations say little its samples fall back on the climatology);
  ``precip`` as ``(log1p(p) - mean) / std`` and ``olr`` as ``(o - mean) / std``, each with NaN
  replaced by 0.0 and a ``precip_mask`` / ``olr_mask`` (1 valid, 0 missing).
- ``stats.json``: the means and stds, from the training years only; ``t.mean``/``t.std`` of
  the full field per level (the paper's standardisation, in which observation noise variances
  are given) and ``t.anomaly_std`` per level (the state's scale).
- ``climatology.nc``: ``t`` in K with dims (dayofyear=1..366, level, lat, lon), the least-squares
  fit ``c_0 + sum_{k=1..3} a_k cos(k theta) + b_k sin(k theta)``,
  ``theta = 2 pi (dayofyear - 1) / 365.25``, to the training days at each grid point (the
  day-of-year mean smoothed by 3 annual harmonics).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

logger = logging.getLogger(__name__)

TRANSFORMS = ("log1p", "none")
HARMONICS = 3
# The encoder's observation modalities of each latent modality set.
MODALITY_VARIABLES = {
    "none": (),
    "insitu": ("precip",),
    "exsitu": ("olr",),
    "both": ("precip", "olr"),
}


def _empty_days(da: xr.DataArray, block: int = 32) -> np.ndarray:
    """``(time,)`` True where a day holds no finite value, read ``block`` days at a time."""
    blank = np.zeros(da.sizes["time"], bool)
    for start in range(0, da.sizes["time"], block):
        values = da.isel(time=slice(start, start + block)).values
        blank[start : start + len(values)] = ~np.isfinite(values).reshape(len(values), -1).any(1)
    return blank


@dataclass
class _Files:
    """The per-year files of one variable and the dates each holds."""

    name: str
    dates: dict[Path, pd.DatetimeIndex]
    # days a file holds whose values are all missing: treated as absent (left out of the splits)
    empty: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([]))

    @staticmethod
    def index(paths: list, name: str) -> _Files:
        dates: dict[Path, pd.DatetimeIndex] = {}
        empty = []
        for path in sorted(Path(p) for p in paths):
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if name not in ds:
                    raise ValueError(f"{path}: no variable '{name}' (has {list(ds)})")
                held = ds.indexes["time"]
                blank = _empty_days(ds[name])
                if blank.any():
                    empty.append(held[blank])
                dates[path] = held[~blank]
        if not dates:
            raise ValueError(f"no input files for '{name}'")
        every = pd.DatetimeIndex(np.concatenate([d.values for d in dates.values()]))
        if every.has_duplicates:
            raise ValueError(
                f"'{name}' files hold some dates twice: {every[every.duplicated()][:3]}"
            )
        gone = pd.DatetimeIndex(np.concatenate([d.values for d in empty])) if empty else None
        if gone is not None:
            logger.warning(
                "'%s': %d days are present but entirely missing (%s): treated as absent days "
                "(left out of the splits, not filled)",
                name,
                len(gone),
                describe_dates(gone),
            )
            return _Files(name, dates, gone)
        return _Files(name, dates)

    def all_dates(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(np.concatenate([d.values for d in self.dates.values()]))

    def load(self, dates: pd.DatetimeIndex) -> xr.DataArray:
        """The variable at ``dates`` (sorted), read only from the files that hold them."""
        parts = []
        for path, held in self.dates.items():
            wanted = held.intersection(dates)
            if len(wanted):
                with xr.open_dataset(path, engine="netcdf4") as ds:
                    parts.append(ds[self.name].sel(time=wanted).load())
        # join="exact": files of one variable on different grids are an error, not NaN padding.
        return xr.concat(parts, dim="time", join="exact").sortby("time").astype(np.float32)


def _check_splits(splits: dict[str, tuple[int, int]]) -> None:
    """Raise a one-line ValueError for a missing train split, reversed or overlapping ranges."""
    if "train" not in splits:
        raise ValueError(f"splits need a 'train' entry (got {sorted(splits)})")
    for name, (first, last) in splits.items():
        if first > last:
            raise ValueError(f"split '{name}' starts after it ends ({first} > {last})")
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1), (b0, b1) = splits[a], splits[b]
            if a0 <= b1 and b0 <= a1:
                raise ValueError(
                    f"splits '{a}' ({a0}-{a1}) and '{b}' ({b0}-{b1}) overlap: "
                    "each year must belong to one split"
                )


def _check_same_grid(arrays: list[xr.DataArray]) -> None:
    reference = arrays[0]
    for other in arrays[1:]:
        for dim in ("lat", "lon"):
            if reference.sizes[dim] != other.sizes[dim] or not np.allclose(
                reference[dim], other[dim]
            ):
                raise ValueError(
                    f"'{reference.name}' and '{other.name}' are on different {dim} grids: "
                    "regrid all sources to the same resolution"
                )


class _Moments:
    """Count, mean and sum of squared deviations of the finite values, added block by block.

    Each block contributes its own mean and squared deviations (float64); blocks are merged
    with the pairwise update of Chan et al.: ``delta = mean_b - mean``,
    ``M2 += M2_b + delta^2 n n_b / (n + n_b)``. The result equals ``nanmean``/``nanstd``
    (population) over all blocks at once, without holding them together.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)].astype(np.float64)
        if finite.size == 0:
            return
        mean = finite.mean()
        m2 = np.sum((finite - mean) ** 2)
        count = self.count + finite.size
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * self.count * finite.size / count
        self.mean += delta * finite.size / count
        self.count = count

    def mean_std(self) -> tuple[float, float]:
        std = float(np.sqrt(self.m2 / self.count)) if self.count else float("nan")
        if not self.count or std == 0 or not np.isfinite(std):
            raise ValueError(
                "a variable has no variance (or no valid values) in the training years"
            )
        return float(self.mean), std


def _transform_precip(precip: np.ndarray, transform: str) -> np.ndarray:
    # Conservative regridding keeps precip >= 0; clip guards log1p against rounding noise.
    return np.log1p(np.clip(precip, 0.0, None)) if transform == "log1p" else precip


class _TrainingSums:
    """Everything the training years contribute, accumulated one year at a time.

    Per-level moments of ``t``, moments of transformed ``precip`` and of ``olr`` over their
    valid points, and the normal equations ``G = D^T D``, ``R = D^T x`` of the harmonic
    climatology fit (``D`` the design of :func:`_harmonic_design`, ``x`` every grid value of
    ``t``), so that memory holds one year, not sixteen.
    """

    def __init__(self, transform: str):
        self.transform = transform
        self.t = self.precip = self.olr = None
        self.gram = self.rhs = None
        self.template: xr.DataArray | None = None

    def add(self, t: xr.DataArray, precip: xr.DataArray, olr: xr.DataArray) -> None:
        if self.t is None:
            self.t = [_Moments() for _ in range(t.sizes["level"])]
            self.precip, self.olr = _Moments(), _Moments()
            self.gram = np.zeros((1 + 2 * HARMONICS,) * 2)
            self.rhs = np.zeros((1 + 2 * HARMONICS, int(np.prod(t.shape[1:]))))
            self.sumsq = np.zeros(int(np.prod(t.shape[1:])))
            self.days = 0
            self.template = t.isel(time=0, drop=True)
        for level, moments in enumerate(self.t):  # a level at a time bounds float64 copies
            moments.add(t.values[:, level])
        self.precip.add(_transform_precip(precip.values, self.transform))
        self.olr.add(olr.values)
        design = _harmonic_design(t.indexes["time"].day_of_year.to_numpy())
        self.gram += design.T @ design
        values = t.values.reshape(t.sizes["time"], -1)
        for start in range(0, values.shape[1], 2**16):
            block = values[:, start : start + 2**16].astype(np.float64)
            self.rhs[:, start : start + 2**16] += design.T @ block
            self.sumsq[start : start + 2**16] += np.square(block).sum(axis=0)
        self.days += t.sizes["time"]

    def stats(self, years: tuple) -> dict:
        """The stats.json content: per-level t, precip (transformed) and olr mean and std."""
        t_mean, t_std = (np.array(v) for v in zip(*(m.mean_std() for m in self.t), strict=True))
        p_mean, p_std = self.precip.mean_std()
        o_mean, o_std = self.olr.mean_std()
        return {
            "t": {
                "mean": t_mean.tolist(),
                "std": t_std.tolist(),
                "anomaly_std": self.anomaly_std().tolist(),
            },
            "precip": {"mean": float(p_mean), "std": float(p_std), "transform": self.transform},
            "olr": {"mean": float(o_mean), "std": float(o_std)},
            "levels": [float(level) for level in self.template["level"].values],
            "train_years": [int(years[0]), int(years[1])],
        }

    def anomaly_std(self) -> np.ndarray:
        """Per-level standard deviation of ``t`` about its harmonic climatology (training days).

        At the least-squares fit ``beta = G^-1 R`` the residual sum of squares of a grid point
        is ``sum x^2 - beta^T R``; it is summed over the level's points.
        """
        levels = self.template.sizes["level"]
        residual = np.empty(self.rhs.shape[1])
        for start in range(0, self.rhs.shape[1], 2**16):
            rhs = self.rhs[:, start : start + 2**16]
            beta = np.linalg.solve(self.gram, rhs)
            residual[start : start + 2**16] = self.sumsq[start : start + 2**16] - (beta * rhs).sum(
                0
            )
        per_level = np.maximum(residual, 0.0).reshape(levels, -1).sum(1)
        points = residual.size // levels
        std = np.sqrt(per_level / (self.days * points))
        if not np.all(std > 0):
            raise ValueError("temperature anomalies have zero variance at some level")
        return std

    def climatology(self) -> xr.DataArray:
        """Harmonic fit of the training ``t`` in K, on dayofyear 1..366 (see the module doc)."""
        dayofyear = np.arange(1, 367)
        evaluate = _harmonic_design(dayofyear)
        fitted = np.empty((366, self.rhs.shape[1]), np.float32)
        for start in range(0, self.rhs.shape[1], 2**16):  # bounds the float64 temporaries
            block = np.linalg.solve(self.gram, self.rhs[:, start : start + 2**16])
            fitted[:, start : start + 2**16] = evaluate @ block
        t = self.template
        return xr.DataArray(
            fitted.reshape(366, *t.shape),
            dims=("dayofyear", "level", "lat", "lon"),
            coords={"dayofyear": dayofyear, "level": t["level"], "lat": t["lat"], "lon": t["lon"]},
            name="t",
            attrs={
                "units": "K",
                "long_name": "temperature climatology of the training years",
                "method": (
                    f"least-squares fit of mean + {HARMONICS} annual harmonics per grid point"
                ),
            },
        )


def _normalised_split(
    t: xr.DataArray, precip: xr.DataArray, olr: xr.DataArray, stats: dict, clim: xr.DataArray
) -> xr.Dataset:
    """Normalised float32 dataset with NaN -> 0 fill and validity masks for precip and olr."""
    if t.isnull().any():
        raise ValueError("temperature has missing values: ERA5 t must be complete")
    data = {"t": to_anomaly(t, climatology_of(clim, t["time"]), stats).astype(np.float32)}
    transform = stats["precip"]["transform"]
    for name, values in (
        ("precip", _transform_precip(precip.values, transform)),
        ("olr", olr.values),
    ):
        valid = np.isfinite(values)
        normalised = (values - stats[name]["mean"]) / stats[name]["std"]
        data[name] = (("time", "lat", "lon"), np.where(valid, normalised, 0.0).astype(np.float32))
        data[f"{name}_mask"] = (("time", "lat", "lon"), valid.astype(np.float32))
    ds = xr.Dataset(data, coords={"time": t["time"], "lat": t["lat"], "lon": t["lon"]})
    for name in ("precip", "olr"):
        ds[name].attrs = {"units": "1", "normalisation": "(x - mean) / std, see stats.json"}
    ds["t"].attrs = {
        "units": "1",
        "normalisation": "(t - climatology(dayofyear)) / anomaly_std, see stats.json",
    }
    ds["precip"].attrs["transform"] = transform
    for name in ("precip_mask", "olr_mask"):
        ds[name].attrs = {"units": "1", "long_name": "1 where observed, 0 where missing"}
    return ds


def _harmonic_design(dayofyear: np.ndarray) -> np.ndarray:
    """``(n, 1 + 2 HARMONICS)`` columns ``1, cos(k theta), sin(k theta)``."""
    theta = 2 * np.pi * (np.asarray(dayofyear, dtype=np.float64) - 1.0) / 365.25
    columns = [np.ones_like(theta)]
    for k in range(1, HARMONICS + 1):
        columns += [np.cos(k * theta), np.sin(k * theta)]
    return np.stack(columns, axis=1)


# Normalised temperature/OLR are incompressible noise to zlib (slow, ~10 % smaller);
# masks and zero-filled precip compress well.
_COMPRESSED = ("precip", "precip_mask", "olr_mask")


def _write(ds: xr.Dataset, path: Path) -> None:
    encoding = {
        name: {"zlib": True, "complevel": 1} for name in ds.data_vars if name in _COMPRESSED
    }
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=encoding)


def _write_split(path: Path, dates: pd.DatetimeIndex, blocks, attrs: dict) -> None:
    """Write the normalised split ``path`` from ``blocks`` (datasets of consecutive days).

    The file is laid out as xarray would write the whole split at once (same variables,
    dims, attributes, ``time`` as days since the first date), filled one block at a time.
    """
    import netCDF4

    nc = None
    start = 0
    try:
        for block in blocks:
            if nc is None:
                nc = netCDF4.Dataset(path, "w", format="NETCDF4")
                nc.setncatts(attrs)
                nc.createDimension("time", len(dates))
                for dim in ("level", "lat", "lon"):
                    nc.createDimension(dim, block.sizes[dim])
                time_var = nc.createVariable("time", "i8", ("time",))
                time_var.units = f"days since {dates[0]:%Y-%m-%d} 00:00:00"
                time_var.calendar = "proleptic_gregorian"
                time_var[:] = np.asarray((dates - dates[0]) // pd.Timedelta("1D"))
                for dim in ("level", "lat", "lon"):
                    var = nc.createVariable(dim, "f8", (dim,), fill_value=np.nan)
                    var.setncatts(block[dim].attrs)
                    var[:] = block[dim].values
                for name, da in block.data_vars.items():
                    compressed = name in _COMPRESSED
                    var = nc.createVariable(
                        name,
                        "f4",
                        da.dims,
                        fill_value=np.nan,
                        zlib=compressed,
                        complevel=1 if compressed else None,
                        chunksizes=(1, *da.shape[1:]) if compressed else None,
                        contiguous=not compressed,
                    )
                    var.setncatts(da.attrs)
            if not block.indexes["time"].equals(dates[start : start + block.sizes["time"]]):
                raise ValueError(f"{path.name}: blocks do not follow the split's dates")
            for name, da in block.data_vars.items():
                nc[name][start : start + block.sizes["time"]] = da.values
            start += block.sizes["time"]
    finally:
        if nc is not None:
            nc.close()
    if start != len(dates):
        raise ValueError(f"{path.name}: wrote {start} of {len(dates)} days")


def describe_dates(dates: pd.DatetimeIndex, limit: int = 5) -> str:
    """Dates as compact ranges: ``2001-01-01..2001-01-03, 2001-03-05, and 2 more ranges``."""
    dates = pd.DatetimeIndex(dates).sort_values()
    if len(dates) == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(dates.values) != np.timedelta64(1, "D")) + 1
    runs = np.split(np.arange(len(dates)), breaks)
    parts = []
    for run in runs[:limit]:
        first, last = dates[run[0]].date(), dates[run[-1]].date()
        parts.append(str(first) if first == last else f"{first}..{last}")
    if len(runs) > limit:
        parts.append(f"and {len(runs) - limit} more ranges")
    return ", ".join(parts)


def report_missing_dates(
    files: list[_Files], splits: dict[str, tuple[int, int]]
) -> pd.DatetimeIndex:
    """The dates every variable holds; log what is missing, per variable and per split.

    Nothing is filled: a day that one source lacks (a gap in the OLR record, a late CPC file)
    is left out of every split, and each variable's missing days of the split years are
    reported with ``logging.warning`` as ranges, so that a gap is seen, not silently absorbed.
    """
    every = [f.all_dates() for f in files]
    common = every[0].intersection(every[1]).intersection(every[2]).sort_values()
    union = every[0].union(every[1]).union(every[2])
    dropped = union.difference(common)
    if len(dropped):
        logger.warning(
            "dropping %d dates not present in all of t, precip and olr (%s ... %s)",
            len(dropped),
            dropped[0].date(),
            dropped[-1].date(),
        )
    calendar = pd.DatetimeIndex(
        np.concatenate(
            [
                pd.date_range(f"{first}-01-01", f"{last}-12-31", freq="D").values
                for first, last in splits.values()
            ]
        )
    ).sort_values()
    for f, dates in zip(files, every, strict=True):
        missing = calendar.difference(dates)
        if len(missing):
            logger.warning(
                "'%s' lacks %d of the %d days of the split years: %s (left out, not filled)",
                f.name,
                len(missing),
                len(calendar),
                describe_dates(missing),
            )
    for name, (first, last) in splits.items():
        days = calendar[(calendar.year >= first) & (calendar.year <= last)]
        used = common[(common.year >= first) & (common.year <= last)]
        if len(used) < len(days):
            logger.warning(
                "split '%s' (%d-%d): %d of %d days have all three variables",
                name,
                first,
                last,
                len(used),
                len(days),
            )
        else:
            logger.info("split '%s' (%d-%d): all %d days present", name, first, last, len(days))
    return common


def build_dataset(
    t_paths: list,
    precip_paths: list,
    olr_paths: list,
    out_dir: str | Path,
    splits: dict[str, tuple[int, int]],
    precip_transform: str = "log1p",
) -> None:
    """Write ``{split}.nc``, ``stats.json`` and ``climatology.nc`` into ``out_dir``.

    splits: e.g. ``{"train": (2000, 2002), "validation": (2003, 2003), "test": (2004, 2004)}``,
    inclusive years, no overlap, "train" required. Only dates present in all three variables
    are used (the others are reported with ``logging.warning``, per variable and split, see
    :func:`report_missing_dates`; nothing is filled); a split without dates raises.
    Statistics and climatology come from the training years only. Memory holds one year of
    the three variables at a time (two passes: statistics, then the normalised splits).
    """
    if precip_transform not in TRANSFORMS:
        raise ValueError(f"precip_transform '{precip_transform}' unknown: use one of {TRANSFORMS}")
    _check_splits(splits)
    files = [
        _Files.index(t_paths, "t"),
        _Files.index(precip_paths, "precip"),
        _Files.index(olr_paths, "olr"),
    ]
    common = report_missing_dates(files, splits)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def years_of(name: str):
        """(t, precip, olr) of the split's common dates, one calendar year at a time."""
        first, last = splits[name]
        dates = common[(common.year >= first) & (common.year <= last)]
        if len(dates) == 0:
            raise ValueError(
                f"split '{name}' ({first}-{last}) has no dates common to t, precip and olr"
            )
        for year in np.unique(dates.year):
            arrays = [f.load(dates[dates.year == year]) for f in files]
            _check_same_grid(arrays)
            yield arrays

    # Pass 1, training years: statistics and climatology, accumulated year by year.
    sums = _TrainingSums(precip_transform)
    for t, precip, olr in years_of("train"):
        sums.add(t, precip, olr)
    stats = sums.stats(splits["train"])
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    climatology = sums.climatology()
    _write(climatology.to_dataset(), out_dir / "climatology.nc")

    # Pass 2, every split: normalised with the training statistics, written year by year.
    for name in ["train", *(s for s in splits if s != "train")]:
        first, last = splits[name]

        def blocks(name=name):
            for t, precip, olr in years_of(name):
                if [float(level) for level in t["level"].values] != stats["levels"]:
                    raise ValueError(
                        f"split '{name}' has levels {t['level'].values}, train has others"
                    )
                yield _normalised_split(t, precip, olr, stats, climatology)

        dates = common[(common.year >= first) & (common.year <= last)]
        attrs = {"split": name, "years": f"{first}-{last}"}
        _write_split(out_dir / f"{name}.nc", dates, blocks(), attrs)


def load_stats(path: str | Path) -> dict:
    """Read ``stats.json`` written by :func:`build_dataset`."""
    return json.loads(Path(path).read_text())


def _level_stats(x, stats: dict):
    """Per-level mean and std shaped to broadcast against ``x``.

    xarray: DataArrays on dim "level" (selected at ``x``'s levels when it has them);
    numpy / torch: level axis -3, i.e. shape ``(L, 1, 1)``.
    """
    mean = np.asarray(stats["t"]["mean"], dtype=np.float64)
    std = np.asarray(stats["t"]["std"], dtype=np.float64)
    if isinstance(x, xr.DataArray):
        coords = {"level": np.asarray(stats["levels"], dtype=np.float64)}
        mean = xr.DataArray(mean, dims="level", coords=coords)
        std = xr.DataArray(std, dims="level", coords=coords)
        if "level" in x.coords:
            mean, std = mean.sel(level=x["level"].values), std.sel(level=x["level"].values)
            mean, std = mean.assign_coords(level=x["level"]), std.assign_coords(level=x["level"])
        return mean.astype(x.dtype), std.astype(x.dtype)
    if x.shape[-3] != mean.size:
        raise ValueError(f"level axis -3 has size {x.shape[-3]}, stats have {mean.size} levels")
    mean, std = mean[:, None, None], std[:, None, None]
    if hasattr(x, "new_tensor"):  # torch tensor: stay on its device and dtype
        return x.new_tensor(mean), x.new_tensor(std)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return mean.astype(dtype), std.astype(dtype)


def normalise_t(x, stats: dict):
    """``(x - mean_level) / std_level`` for xarray (dim "level"), numpy or torch (axis -3)."""
    mean, std = _level_stats(x, stats)
    return (x - mean) / std


def denormalise_t(x, stats: dict):
    """``x std_level + mean_level`` (kelvin) for xarray (dim "level"), numpy or torch (axis -3)."""
    mean, std = _level_stats(x, stats)
    return x * std + mean


def climatology_of(climatology: xr.DataArray, times) -> xr.DataArray:
    """The climatology (K) of each day of ``times``: ``(time, level, lat, lon)``."""
    times = pd.DatetimeIndex(np.asarray(times))
    doy = xr.DataArray(times.day_of_year.to_numpy(), dims="time", coords={"time": times})
    if isinstance(climatology, xr.Dataset):
        climatology = climatology["t"]
    return climatology.sel(dayofyear=doy).drop_vars("dayofyear")


def _anomaly_std(x, stats: dict):
    std = np.asarray(stats["t"]["anomaly_std"], dtype=np.float64)
    if isinstance(x, xr.DataArray):
        return xr.DataArray(std, dims="level").astype(x.dtype)
    std = std[:, None, None]
    if hasattr(x, "new_tensor"):
        return x.new_tensor(std)
    return std.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def to_anomaly(t_k, climatology_k, stats: dict):
    """Kelvin -> the state: ``(t - climatology) / anomaly_std_level`` (level axis -3 or dim)."""
    if isinstance(t_k, xr.DataArray):
        t_k = t_k.transpose("time", "level", "lat", "lon")
        climatology_k = climatology_k.transpose(*t_k.dims).values
        return (t_k - climatology_k) / _anomaly_std(t_k, stats).values[:, None, None]
    return (t_k - climatology_k) / _anomaly_std(t_k, stats)


def from_anomaly(x, climatology_k, stats: dict, out=None):
    """The state -> kelvin: ``x anomaly_std_level + climatology`` (numpy or torch, axis -3).
    ``out`` (numpy): the array to write into, which may be ``x`` itself (an ensemble converted
    in place, without a second copy of it)."""
    if out is None:
        return x * _anomaly_std(x, stats) + climatology_k
    np.multiply(x, _anomaly_std(x, stats), out=out)
    return np.add(out, climatology_k, out=out, casting="same_kind")


def noise_to_state_units(variance: float, stats: dict) -> np.ndarray:
    """An observation-noise variance given in the paper's units (the full field standardised
    per level) in the state's units, per level: ``variance (std_level / anomaly_std_level)^2``,
    so that the noise in kelvin is the paper's. Shape ``(levels, 1, 1)``."""
    ratio = np.asarray(stats["t"]["std"]) / np.asarray(stats["t"]["anomaly_std"])
    return (variance * ratio**2)[:, None, None]
