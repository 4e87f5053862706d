import importlib.util

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from slams.data.regrid import conservative_regrid, open_source, regrid_file
from slams.data.synthetic import write_synthetic
from slams.grid import area_weights, target_grid

TIMES = pd.date_range("2001-01-01", periods=3, freq="D")


def smooth_field(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A smooth analytic field (3, lat, lon), single-valued at the poles."""
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    base = 250 + 30 * np.cos(phi) ** 2 + 4 * np.sin(phi) + 6 * np.cos(phi) ** 3 * np.sin(3 * lam)
    return np.stack([base + k * np.cos(phi) * np.cos(lam) for k in range(3)])


def as_array(values, lat, lon, name="x") -> xr.DataArray:
    return xr.DataArray(
        values,
        dims=("time", "lat", "lon"),
        coords={"time": TIMES, "lat": lat, "lon": lon},
        name=name,
    )


def sphere_mean(da: xr.DataArray) -> np.ndarray:
    """Exact area-weighted mean over the sphere of a regular-lon field (per time)."""
    weights = area_weights(da["lat"].values).values
    return (da.mean("lon").values * weights).sum(-1) / weights.sum()


def node_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """ERA5-like node grid: lat 90..-90 descending with poles, lon 0..360-r."""
    return np.linspace(90, -90, round(180 / resolution) + 1), np.arange(0, 360, resolution)


@pytest.mark.parametrize(
    ("source", "target"),
    [("nodes 3.75", 5.625), ("centres 11.25", 1.875), ("centres 1.875", 11.25)],
    ids=["nodes-to-target", "coarse-to-fine", "fine-to-coarse"],
)
def test_global_mean_is_conserved(source, target):
    kind, resolution = source.split()
    grid = node_grid if kind == "nodes" else target_grid
    lat, lon = grid(float(resolution))
    da = as_array(smooth_field(lat, lon), lat, lon)
    out = conservative_regrid(da, *target_grid(target))
    assert out.dims == ("time", "lat", "lon") and out.dtype == np.float32
    assert np.allclose(sphere_mean(out), sphere_mean(da), rtol=1e-6, atol=0)
    assert np.abs(out - conservative_regrid(da, *target_grid(target))).max() == 0


def test_pole_rows_of_a_node_grid_carry_half_cells():
    lat, lon = node_grid(3.75)
    values = np.zeros((3, lat.size, lon.size))
    values[:, [0, -1]] = 1.0  # only the two pole rows are non-zero
    out = conservative_regrid(as_array(values, lat, lon), *target_grid(11.25))
    cap = (1 - np.sin(np.deg2rad(90 - 3.75 / 2))) / 2  # area fraction of one polar half cell
    assert np.allclose(sphere_mean(out), 2 * cap, rtol=1e-6)


def test_constant_stays_constant_and_nested_cells_are_exact_block_means():
    lat, lon = target_grid(1.875)
    assert np.allclose(
        conservative_regrid(as_array(np.full((3, 96, 192), 7.5), lat, lon), *target_grid(5.625)),
        7.5,
    )
    # 1.875 -> 5.625 nests 3 x 3 source cells in each target: the answer is their area mean.
    values = np.random.default_rng(0).normal(size=(3, 96, 192))
    out = conservative_regrid(as_array(values, lat, lon), *target_grid(5.625)).values
    weights = np.cos(np.deg2rad(lat))  # cell areas of a regular cell-centred grid
    block = (values * weights[:, None]).reshape(3, 32, 3, 64, 3).sum(axis=(2, 4))
    expected = block / (3 * weights.reshape(32, 3).sum(axis=1))[:, None]
    assert np.allclose(out, expected, atol=1e-5)


def test_longitude_convention_and_descending_latitude_do_not_matter():
    lat, lon = target_grid(3.75)
    values = smooth_field(lat, lon)
    reference = conservative_regrid(as_array(values, lat, lon), *target_grid(11.25))
    # Same field on lon -180..180 with latitude descending.
    shifted = np.where(lon >= 180, lon - 360, lon)
    order = np.argsort(shifted)
    flipped = as_array(values[:, ::-1][:, :, order], lat[::-1], shifted[order])
    out = conservative_regrid(flipped, *target_grid(11.25))
    assert np.allclose(out, reference, atol=1e-4)


def test_missing_values_stay_missing_and_do_not_leak():
    lat, lon = target_grid(1.875)
    values = np.full((3, lat.size, lon.size), 5.0)
    # "Land" in the columns 0..93.75 E (50 source columns); the rest is ocean (NaN).
    values[:, :, lon > 93.75] = np.nan
    out = conservative_regrid(as_array(values, lat, lon), *target_grid(5.625)).values
    target_lon = target_grid(5.625)[1]
    assert np.allclose(out[np.isfinite(out)], 5.0)  # no zeros mixed in at the coast
    assert np.isnan(out[:, :, target_lon > 95.625]).all()  # all-ocean cells are NaN
    assert np.isfinite(out[:, :, target_lon < 90]).all()
    # The cell 90..95.625 E is 2/3 land: valid at the default threshold 0.5, NaN at 0.7.
    coast = np.argmin(np.abs(target_lon - 92.8125))
    assert np.isfinite(out[:, :, coast]).all()
    strict = conservative_regrid(as_array(values, lat, lon), *target_grid(5.625), 0.7)
    assert np.isnan(strict.values[:, :, coast]).all()
    # A gradient on land: the coastal value is the mean of its valid cells only.
    values[:, :, lon < 93.75] = lon[lon < 93.75]
    out = conservative_regrid(as_array(values, lat, lon), *target_grid(5.625)).values
    assert np.allclose(out[:, :, coast], np.mean([90.9375, 92.8125]), atol=1e-4)


def write_raw(path, values, lat, lon, name, units, packed=False):
    da = as_array(values.astype(np.float32), lat, lon, name)
    da.attrs["units"] = units
    ds = da.to_dataset()
    if packed:
        encoding = {
            name: {
                "dtype": "int16",
                "scale_factor": 0.01,
                "add_offset": 327.65,
                "_FillValue": 32767,
            }
        }
    else:
        encoding = {
            name: {"_FillValue": np.float32(-9.96921e36), "missing_value": np.float32(-9.96921e36)}
        }
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)


def test_open_source_standardises_cpc_and_olr(tmp_path):
    lat = np.arange(88.75, -90, -2.5)  # descending cell centres
    lon = np.arange(-178.75, 180, 2.5)  # -180..180
    values = smooth_field(lat, lon) / 100.0
    values[:, 10:20, 30:40] = np.nan
    write_raw(tmp_path / "cpc.nc", values, lat, lon, "precip", "mm")
    da = open_source(tmp_path / "cpc.nc", "cpc")
    assert da.name == "precip" and da.dims == ("time", "lat", "lon") and da.dtype == np.float32
    assert da.attrs["units"] == "mm/day"
    assert (np.diff(da["lat"]) > 0).all() and (np.diff(da["lon"]) > 0).all()
    assert da["lon"].min() >= 0 and da["lon"].max() < 360
    # A physical location keeps its value: (lat 1.25, lon -1.25) is (1.25, 358.75) now.
    original = values[:, np.argmin(np.abs(lat - 1.25)), np.argmin(np.abs(lon + 1.25))]
    assert np.allclose(da.sel(lat=1.25, lon=358.75).values, original)
    assert int(da.isnull().sum()) == 3 * 10 * 10  # fill values decoded to NaN

    write_raw(tmp_path / "olr.nc", values * 100, lat, lon, "olr", "W/m^2", packed=True)
    olr = open_source(tmp_path / "olr.nc", "olr")
    assert olr.attrs["units"] == "W m-2" and olr.dtype == np.float32
    assert np.nanmax(np.abs(olr.sel(lat=lat, lon=np.mod(lon, 360)).values - values * 100)) <= 0.006


def test_open_source_rejects_unknown_units(tmp_path):
    lat, lon = target_grid(30.0)
    write_raw(tmp_path / "bad.nc", smooth_field(lat, lon), lat, lon, "precip", "kg m-2 s-1")
    with pytest.raises(ValueError, match="units"):
        open_source(tmp_path / "bad.nc", "cpc")


def test_regrid_file_on_synthetic_sources(tmp_path):
    write_synthetic(tmp_path / "raw", [2001], [100, 500, 1000], 3, 7.5, 3.75, 15.0)
    for source, name in (("era5", "t"), ("cpc", "precip"), ("olr", "olr")):
        regrid_file(
            tmp_path / "raw" / source / "2001.nc", tmp_path / source / "2001.nc", source, 11.25
        )
        ds = xr.open_dataset(tmp_path / source / "2001.nc")
        dims = ("time", "level", "lat", "lon") if source == "era5" else ("time", "lat", "lon")
        assert ds[name].dims == dims and ds[name].dtype == np.float32
        assert ds.sizes["lat"] == 16 and ds.sizes["lon"] == 32 and ds.sizes["time"] == 365
        raw = open_source(tmp_path / "raw" / source / "2001.nc", source)
        if source == "cpc":  # land only: NaN over ocean, some land cells survive
            assert 0.1 < float(ds[name].notnull().mean()) < 0.5
        else:
            first = raw.isel(time=0).load()
            if source == "era5":
                first = first.sel(level=500)
                assert list(ds["level"].values) == [100, 500, 1000]
            regridded = ds[name].isel(time=0)
            regridded = regridded.sel(level=500) if source == "era5" else regridded
            assert np.allclose(
                sphere_mean(regridded.expand_dims("time")),
                sphere_mean(first.expand_dims("time")),
                rtol=1e-5,
            )


@pytest.mark.skipif(importlib.util.find_spec("xesmf") is not None, reason="xesmf is installed")
def test_regrid_file_backends(tmp_path):
    with pytest.raises(ImportError, match="xesmf"):
        regrid_file(tmp_path / "a.nc", tmp_path / "b.nc", "era5", 5.625, backend="xesmf")
    with pytest.raises(ValueError, match="backend"):
        regrid_file(tmp_path / "a.nc", tmp_path / "b.nc", "era5", 5.625, backend="bilinear")
