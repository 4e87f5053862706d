import filecmp

import netCDF4
import numpy as np
import pytest
import xarray as xr

from slams.data import synthetic
from slams.grid import area_weights

LEVELS = [10, 50, 100, 200, 300, 500, 700, 850, 925, 1000]
YEARS = [2000, 2001]
RESOLUTION = 7.5  # same for all sources: ERA5 and OLR nodes coincide, CPC centres sit between


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two years of the world at 7.5 degrees; also captures the float fields before packing
    (``written``: the blocks each file was given, joined)."""
    out = tmp_path_factory.mktemp("synthetic")
    blocks = {}
    original = synthetic._Stream.write

    def capture(stream, block, values):
        blocks.setdefault((stream.path.parent.name, int(stream.path.stem)), []).append(
            values.copy()
        )
        original(stream, block, values)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic._Stream, "write", capture)
        synthetic.write_synthetic(out, YEARS, LEVELS, 1, RESOLUTION, RESOLUTION, RESOLUTION)

    written = {key: np.concatenate(values) for key, values in blocks.items()}

    def load(source, name, dim):
        return xr.concat(
            [xr.open_dataset(out / source / f"{y}.nc")[name] for y in YEARS], dim
        ).load()

    return {
        "dir": out,
        "written": written,
        "block_days": {key: [len(v) for v in values] for key, values in blocks.items()},
        "t": load("era5", "t", "valid_time"),
        "precip": load("cpc", "precip", "time"),
        "olr": load("olr", "olr", "time"),
    }


def anomalies(values: np.ndarray) -> np.ndarray:
    """Remove a per-point mean + 3 annual harmonics fit along axis 0."""
    n = values.shape[0]
    theta = 2 * np.pi * np.arange(n) / 365.25
    design = np.stack([np.ones(n)] + [f(k * theta) for k in (1, 2, 3) for f in (np.cos, np.sin)])
    flat = values.reshape(n, -1).astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(design.T, flat, rcond=None)
    return (flat - design.T @ coefficients).reshape(values.shape)


def node_to_centres(values: np.ndarray) -> np.ndarray:
    """Average the 4 nodes around each cell centre: (t, n+1, m) nodes -> (t, n, m) centres."""
    upper, lower = values[:, :-1], values[:, 1:]
    return 0.25 * (upper + lower + np.roll(upper, -1, -1) + np.roll(lower, -1, -1))


def test_era5_file_layout(world):
    ds = xr.open_dataset(world["dir"] / "era5" / "2000.nc")
    assert ds["t"].dims == ("valid_time", "pressure_level", "latitude", "longitude")
    assert ds["t"].attrs["units"] == "K" and ds["t"].dtype == np.float32
    assert ds["pressure_level"].attrs["units"] == "hPa"
    assert list(ds["pressure_level"].values) == LEVELS
    assert np.allclose(ds["latitude"], np.arange(90, -90.1, -RESOLUTION))  # descending, poles
    assert np.allclose(ds["longitude"], np.arange(0, 360, RESOLUTION))
    times = ds.indexes["valid_time"]
    assert len(times) == 366 and (np.diff(times.values) == np.timedelta64(1, "D")).all()


def test_cpc_file_layout_and_fill_value(world):
    ds = xr.open_dataset(world["dir"] / "cpc" / "2000.nc")
    precip = ds["precip"]
    assert precip.dims == ("time", "lat", "lon") and precip.attrs["units"] == "mm"
    half = RESOLUTION / 2
    assert np.allclose(ds["lat"], np.arange(90 - half, -90, -RESOLUTION))  # descending centres
    assert np.allclose(ds["lon"], np.arange(half, 360, RESOLUTION))
    with netCDF4.Dataset(world["dir"] / "cpc" / "2000.nc") as raw:
        variable = raw["precip"]
        variable.set_auto_maskandscale(False)
        stored = variable[:]
        assert variable.missing_value == variable._FillValue == np.float32(-9.96921e36)
    assert np.array_equal(stored == np.float32(-9.96921e36), np.isnan(precip.values))


def test_olr_is_packed_int16_and_decodes_within_scale_factor(world):
    path = world["dir"] / "olr" / "2001.nc"
    with netCDF4.Dataset(path) as raw:
        variable = raw["olr"]
        assert variable.dtype == np.int16 and variable._FillValue == 32767
        scale = variable.scale_factor
    decoded = xr.open_dataset(path)["olr"]
    assert decoded.attrs["units"] == "W/m^2"
    assert np.allclose(decoded["lat"], np.arange(90, -90.1, -RESOLUTION))
    original = world["written"][("olr", 2001)]
    assert np.abs(decoded.values - original).max() <= 0.5 * scale + 1e-4
    assert 80 < decoded.min() and decoded.max() < 360
    assert 100 < np.percentile(decoded, 1) and np.percentile(decoded, 99) < 330


def test_precip_nan_exactly_over_ocean(world):
    precip = world["precip"]
    world_params = synthetic._World(1)
    land = world_params.land_fraction(synthetic._Basis(precip["lat"].values, precip["lon"].values))
    missing = np.isnan(precip.values)
    assert (missing == (land <= 0.5)[None]).all()  # static mask, NaN only over ocean
    weights = area_weights(precip["lat"].values).values[:, None]
    land_area = (weights * ~missing[0]).sum() / (weights * np.ones_like(land)).sum()
    assert 0.2 < land_area < 0.4


def test_precip_non_negative_zero_inflated_and_skewed(world):
    values = world["precip"].values
    values = values[np.isfinite(values)]
    assert values.min() >= 0.0
    assert 0.35 < (values == 0).mean() < 0.65
    wet = values[values > 0]
    skewness = np.mean((wet - wet.mean()) ** 3) / wet.std() ** 3
    assert skewness > 1.0 and values.mean() > np.median(values)


def test_vertical_structure(world):
    t = world["t"]
    annual = t.mean(("valid_time", "longitude"))
    troposphere = annual.sel(pressure_level=[1000, 850, 700, 500, 300]).values
    assert (np.diff(troposphere, axis=0) < 0).all()  # colder with height everywhere
    tropics = annual.sel(latitude=slice(15, -15)).mean("latitude")
    assert 295 < tropics.sel(pressure_level=1000) < 305
    assert 188 < tropics.sel(pressure_level=100) < 202
    assert 215 < tropics.sel(pressure_level=10) < 240
    # The stratosphere is warmer than the tropopause (the column minimum) at every latitude.
    assert (annual.sel(pressure_level=10) > annual.min("pressure_level") + 5).all()
    january = t.sel(valid_time="2001-01").mean(("valid_time", "longitude"))
    assert january.sel(pressure_level=1000, latitude=90) < 255


def test_seasonal_cycle_opposite_in_the_hemispheres(world):
    surface = world["t"].sel(pressure_level=1000)
    january = surface.sel(valid_time="2001-01").mean(("valid_time", "longitude"))
    july = surface.sel(valid_time="2001-07").mean(("valid_time", "longitude"))
    difference = july - january
    assert (difference.sel(latitude=slice(70, 30)) > 0).all()
    assert (difference.sel(latitude=slice(-30, -70)) < 0).all()
    assert abs(difference.sel(latitude=67.5)) > 3 * abs(difference.sel(latitude=15))
    upper = world["t"].sel(pressure_level=300)
    upper_difference = upper.sel(valid_time="2001-07").mean(
        ("valid_time", "longitude")
    ) - upper.sel(valid_time="2001-01").mean(("valid_time", "longitude"))
    assert upper_difference.sel(latitude=60) < difference.sel(latitude=60)  # weaker aloft


def test_anomalies_persistent_and_larger_outside_the_tropics(world):
    t = world["t"]
    lat = t["latitude"].values
    extratropics = (np.abs(lat) >= 30) & (np.abs(lat) <= 70)
    tropics = np.abs(lat) <= 15
    for level in (850, 500):
        anomaly = anomalies(t.sel(pressure_level=level).values)
        lag1 = (anomaly[1:] * anomaly[:-1]).mean(0) / anomaly.var(0)
        assert 0.75 < lag1[extratropics].mean() < 0.93
        std = anomaly.std(0)
        assert std[extratropics].mean() > 2.0 * std[tropics].mean()
        assert 0.5 < std[tropics].mean() < 2.0 and 2.0 < std[extratropics].mean() < 8.0


def test_anomalies_continuous_across_the_year_boundary(world):
    surface = world["t"].sel(pressure_level=850).values
    day_to_day = np.abs(np.diff(surface, axis=0)).mean(axis=(1, 2))
    boundary = 365  # 2000-12-31 -> 2001-01-01
    assert day_to_day[boundary] < 2.0 * np.median(day_to_day)


def test_modalities_carry_information_about_temperature(world):
    t = world["t"]
    precip = np.log1p(np.nan_to_num(world["precip"].values))
    land = np.isfinite(world["precip"].values[0])
    precip_anomaly = anomalies(precip)[:, land]
    low_level = node_to_centres(anomalies(t.sel(pressure_level=1000).values))[:, land]
    assert np.corrcoef(precip_anomaly.ravel(), low_level.ravel())[0, 1] > 0.25
    olr_anomaly = anomalies(world["olr"].values)
    mid_level = anomalies(t.sel(pressure_level=500).values)  # same node grid as OLR
    assert np.corrcoef(olr_anomaly.ravel(), mid_level.ravel())[0, 1] > 0.15


def test_year_files_do_not_depend_on_the_other_requested_years(world, tmp_path):
    synthetic.write_synthetic(tmp_path, [2001], LEVELS, 1, RESOLUTION, RESOLUTION, RESOLUTION)
    for source in ("era5", "cpc", "olr"):
        alone = xr.open_dataset(tmp_path / source / "2001.nc")
        together = xr.open_dataset(world["dir"] / source / "2001.nc")
        xr.testing.assert_identical(alone, together)


def test_same_seed_identical_files_different_seed_different(tmp_path):
    args = ([2003], [100, 500, 1000], 15.0, 15.0, 15.0)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        years, levels, *resolutions = args
        synthetic.write_synthetic(tmp_path / name, years, levels, seed, *resolutions)
    for source in ("era5", "cpc", "olr"):
        a, b, c = (tmp_path / name / source / "2003.nc" for name in "abc")
        assert filecmp.cmp(a, b, shallow=False)
        name = {"era5": "t", "cpc": "precip", "olr": "olr"}[source]
        assert not np.allclose(
            xr.open_dataset(a)[name].values, xr.open_dataset(c)[name].values, equal_nan=True
        )


def test_years_are_written_a_block_of_days_at_a_time(world):
    # memory holds one block whatever the grid (a year of ERA5 at 0.25 degrees is 15.2 GB)
    for source in ("era5", "cpc", "olr"):
        days = world["block_days"][(source, 2000)]
        assert max(days) <= synthetic.BLOCK_DAYS and sum(days) == 366 and len(days) > 1


def test_a_failure_leaves_no_partial_year(tmp_path, monkeypatch):
    original = synthetic._Stream.write
    calls = []

    def fail_on_the_second_block(stream, block, values):
        calls.append(block)
        if len(calls) > 3:  # the second block of the first file
            raise OSError("disk full")
        original(stream, block, values)

    monkeypatch.setattr(synthetic._Stream, "write", fail_on_the_second_block)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_synthetic(tmp_path, [2003], [500, 1000], 0, 15.0, 15.0, 15.0)
    assert not list(tmp_path.rglob("*.nc"))


def test_the_block_size_does_not_change_the_files(world, tmp_path, monkeypatch):
    # the paper's 0.25 degrees gets 9-day blocks (a 32-day block peaked at 5.1 GB); the smaller
    # blocks must give the same world
    assert synthetic.block_days(721 * 1440, 10) == 9
    assert synthetic.block_days(25 * 48, 10) == synthetic.BLOCK_DAYS
    per_day = 4.0 * (len(LEVELS) + 30) * 25 * 48  # the fixture's 7.5-degree ERA5 grid
    monkeypatch.setattr(synthetic, "BLOCK_BYTES", 5 * per_day)
    assert synthetic.block_days(25 * 48, len(LEVELS)) == 5
    synthetic.write_synthetic(tmp_path, [2001], LEVELS, 1, RESOLUTION, RESOLUTION, RESOLUTION)
    for source in ("era5", "cpc", "olr"):
        small = xr.open_dataset(tmp_path / source / "2001.nc")
        xr.testing.assert_identical(small, xr.open_dataset(world["dir"] / source / "2001.nc"))
