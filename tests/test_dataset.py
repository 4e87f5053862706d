import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from slams.data.dataset import (
    build_dataset,
    climatology_of,
    from_anomaly,
    load_stats,
    noise_to_state_units,
    to_anomaly,
)
from slams.data.regrid import regrid_file
from slams.data.synthetic import write_synthetic
from slams.grid import target_grid

YEARS = range(2000, 2005)
LEVELS = [100.0, 500.0, 850.0]
SPLITS = {"train": (2000, 2002), "validation": (2003, 2003), "test": (2004, 2004)}


def write_year(root, year, seed, drop_olr_days=0, test_shift=0.0):
    """Regridded-style files for one year on a 22.5 degree grid (8 x 16)."""
    rng = np.random.default_rng([seed, year])
    lat, lon = target_grid(22.5)
    time = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    theta = 2 * np.pi * (time.day_of_year.to_numpy() - 1) / 365.25
    season = 10 * np.cos(theta - 0.3)[:, None, None, None]
    offsets = np.array([210.0, 250.0, 275.0])[None, :, None, None]
    t = offsets + season + rng.normal(0, 2, (len(time), 3, 8, 16)) + test_shift
    precip = rng.exponential(3.0, (len(time), 8, 16)) * (rng.random((len(time), 8, 16)) > 0.5)
    precip[:, :, 8:] = np.nan  # "ocean"
    olr = 220 + 40 * rng.standard_normal((len(time), 8, 16)) + test_shift
    olr[5, 2:4] = np.nan  # a missing swath
    coords = {"time": time, "lat": lat, "lon": lon}
    paths = {}
    for name, values, dims in (
        ("t", t, ("time", "level", "lat", "lon")),
        ("precip", precip, ("time", "lat", "lon")),
        ("olr", olr, ("time", "lat", "lon")),
    ):
        da = xr.DataArray(values.astype(np.float32), dims=dims, name=name, coords=coords)
        if name == "t":
            da = da.assign_coords(level=LEVELS)
        if name == "olr" and drop_olr_days:
            da = da.isel(time=slice(drop_olr_days, None))
        paths[name] = root / name / f"{year}.nc"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        da.to_netcdf(paths[name])
    return paths


def write_inputs(root, seed=0, drop_olr_days=0, test_shift=0.0):
    paths = {"t": [], "precip": [], "olr": []}
    for year in YEARS:
        shift = test_shift if year == 2004 else 0.0
        drop = drop_olr_days if year == 2001 else 0
        for name, path in write_year(root, year, seed, drop, shift).items():
            paths[name].append(path)
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    paths = write_inputs(root / "in")
    build_dataset(paths["t"], paths["precip"], paths["olr"], root / "out", SPLITS)
    return root, paths


def open_inputs(paths, name, dates):
    return xr.concat([xr.open_dataset(p)[name] for p in paths[name]], "time").sel(time=dates)


def test_outputs_and_stats_layout(built):
    root, _ = built
    stats = load_stats(root / "out" / "stats.json")
    assert stats["levels"] == LEVELS and stats["train_years"] == [2000, 2002]
    assert len(stats["t"]["mean"]) == len(stats["t"]["std"]) == 3
    assert stats["precip"]["transform"] == "log1p"
    for split in SPLITS:
        ds = xr.open_dataset(root / "out" / f"{split}.nc")
        assert ds["t"].dims == ("time", "level", "lat", "lon")
        for name in ("t", "precip", "precip_mask", "olr", "olr_mask"):
            assert ds[name].dtype == np.float32
            assert not ds[name].isnull().any()


def test_stats_come_from_the_training_years_only(built, tmp_path):
    root, _ = built
    # Same inputs except the test year is shifted by +100: the stats must not move.
    paths = write_inputs(tmp_path / "in", test_shift=100.0)
    build_dataset(paths["t"], paths["precip"], paths["olr"], tmp_path / "out", SPLITS)
    assert load_stats(tmp_path / "out" / "stats.json") == load_stats(root / "out" / "stats.json")
    xr.testing.assert_equal(
        xr.open_dataset(tmp_path / "out" / "climatology.nc"),
        xr.open_dataset(root / "out" / "climatology.nc"),
    )
    test = xr.open_dataset(tmp_path / "out" / "test.nc")
    assert float(test["t"].mean()) > 3.0  # the shifted year really is out of distribution


def test_normalised_train_has_zero_mean_unit_std_per_level(built):
    root, paths = built
    train = xr.open_dataset(root / "out" / "train.nc")
    assert np.allclose(train["t"].mean(("time", "lat", "lon")), 0.0, atol=1e-4)
    assert np.allclose(train["t"].std(("time", "lat", "lon")), 1.0, atol=1e-4)
    valid = train["precip"].values[train["precip_mask"].values == 1]
    assert abs(valid.mean()) < 1e-4 and abs(valid.std() - 1) < 1e-4
    # Precip stats are those of log1p(precip) over the valid training points.
    stats = load_stats(root / "out" / "stats.json")
    raw = open_inputs(paths, "precip", train["time"]).values
    assert stats["precip"]["mean"] == pytest.approx(np.nanmean(np.log1p(raw)), rel=1e-5)


def test_anomalies_invert_to_kelvin(built):
    root, paths = built
    stats = load_stats(root / "out" / "stats.json")
    test = xr.open_dataset(root / "out" / "test.nc")
    clim = climatology_of(xr.open_dataset(root / "out" / "climatology.nc"), test["time"])
    assert clim.dims == ("time", "level", "lat", "lon")
    original = open_inputs(paths, "t", test["time"]).transpose("time", "level", "lat", "lon")
    kelvin = from_anomaly(test["t"].values, clim.values, stats)  # level axis -3
    assert np.allclose(kelvin, original.values, atol=1e-3)
    assert np.allclose(to_anomaly(original, clim, stats), test["t"].values, atol=1e-5)
    torch_kelvin = from_anomaly(torch.from_numpy(test["t"].values), torch.from_numpy(clim.values),
                                stats)  # fmt: skip
    assert np.allclose(torch_kelvin.numpy(), original.values, atol=1e-3)


def test_anomaly_std_is_the_spread_about_the_climatology(built):
    root, paths = built
    stats = load_stats(root / "out" / "stats.json")
    train = xr.open_dataset(root / "out" / "train.nc")
    clim = climatology_of(xr.open_dataset(root / "out" / "climatology.nc"), train["time"])
    raw = open_inputs(paths, "t", train["time"]).transpose("time", "level", "lat", "lon")
    expected = (raw - clim.values).std(("time", "lat", "lon")).values
    np.testing.assert_allclose(stats["t"]["anomaly_std"], expected, rtol=1e-4)
    assert all(a < s for a, s in zip(stats["t"]["anomaly_std"], stats["t"]["std"], strict=True))
    # noise given in the full field's standardised units keeps its variance in kelvin
    variance = noise_to_state_units(0.1, stats)
    in_kelvin = variance[:, 0, 0] * np.square(stats["t"]["anomaly_std"])
    np.testing.assert_allclose(in_kelvin, 0.1 * np.square(stats["t"]["std"]))


def test_masks_match_missing_values_and_fill_is_zero(built):
    root, paths = built
    for split in SPLITS:
        ds = xr.open_dataset(root / "out" / f"{split}.nc")
        for name in ("precip", "olr"):
            raw = open_inputs(paths, name, ds["time"]).values
            mask = ds[f"{name}_mask"].values
            assert np.array_equal(mask == 1, np.isfinite(raw))
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert (ds[name].values[mask == 0] == 0.0).all()
            assert (mask == 0).any()  # the inputs do have gaps


def test_splits_are_disjoint_and_cover_their_years(built):
    root, _ = built
    times = {s: xr.open_dataset(root / "out" / f"{s}.nc").indexes["time"] for s in SPLITS}
    for split, (first, last) in SPLITS.items():
        assert times[split].year.min() == first and times[split].year.max() == last
        assert len(times[split]) == sum(366 if y % 4 == 0 else 365 for y in range(first, last + 1))
    assert not times["train"].intersection(times["validation"]).size
    assert not times["validation"].intersection(times["test"]).size
    assert not times["train"].intersection(times["test"]).size


def test_climatology_is_a_harmonic_fit_in_kelvin(built):
    root, _ = built
    clim = xr.open_dataset(root / "out" / "climatology.nc")["t"]
    assert clim.dims == ("dayofyear", "level", "lat", "lon") and clim.attrs["units"] == "K"
    assert list(clim["dayofyear"].values) == list(range(1, 367))
    theta = 2 * np.pi * (clim["dayofyear"].values - 1) / 365.25
    truth = np.array([210.0, 250.0, 275.0])[None, :] + 10 * np.cos(theta - 0.3)[:, None]
    error = clim.mean(("lat", "lon")).values - truth
    assert np.abs(error).max() < 0.3  # noise of 2 K averaged over 3 years and 128 points


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"train": (2000, 2002), "validation": (2002, 2003), "test": (2004, 2004)}, "overlap"),
        ({"train": (2000, 2002), "validation": (2003, 2003), "test": (2010, 2010)}, "no dates"),
        ({"validation": (2003, 2003)}, "train"),
    ],
)
def test_bad_splits_raise_one_line_errors(built, tmp_path, splits, message):
    _, paths = built
    with pytest.raises(ValueError, match=message) as error:
        build_dataset(paths["t"], paths["precip"], paths["olr"], tmp_path, splits)
    assert "\n" not in str(error.value)


def test_dates_missing_from_one_source_are_dropped_with_a_warning(tmp_path, caplog):
    paths = write_inputs(tmp_path / "in", drop_olr_days=3)
    with caplog.at_level(logging.WARNING):
        build_dataset(paths["t"], paths["precip"], paths["olr"], tmp_path / "out", SPLITS)
    assert "dropping 3 dates" in caplog.text
    train = xr.open_dataset(tmp_path / "out" / "train.nc").indexes["time"]
    assert pd.Timestamp("2001-01-01") not in train and pd.Timestamp("2001-01-04") in train
    assert len(train) == 366 + 365 + 365 - 3


def test_end_to_end_from_synthetic_sources(tmp_path):
    write_synthetic(tmp_path / "raw", [2000, 2001, 2002], [50, 500, 850], 5, 15.0, 7.5, 15.0)
    regridded = {"era5": [], "cpc": [], "olr": []}
    for source, files in regridded.items():
        for year in (2000, 2001, 2002):
            files.append(tmp_path / "grid" / source / f"{year}.nc")
            regrid_file(tmp_path / "raw" / source / f"{year}.nc", files[-1], source, 22.5)
    splits = {"train": (2000, 2000), "validation": (2001, 2001), "test": (2002, 2002)}
    build_dataset(regridded["era5"], regridded["cpc"], regridded["olr"], tmp_path / "out", splits)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["levels"] == [50.0, 500.0, 850.0]
    assert 200 < stats["olr"]["mean"] < 260 and 240 < stats["t"]["mean"][1] < 260
    test = xr.open_dataset(tmp_path / "out" / "test.nc")
    assert 0.1 < float(test["precip_mask"].mean()) < 0.5  # land only
    assert float(test["olr_mask"].mean()) == 1.0


def test_missing_days_are_reported_per_variable_and_split_never_filled(tmp_path, caplog):
    paths = write_inputs(tmp_path / "in", drop_olr_days=3)
    with caplog.at_level(logging.INFO):
        build_dataset(paths["t"], paths["precip"], paths["olr"], tmp_path / "out", SPLITS)
    assert (
        "'olr' lacks 3 of the 1827 days of the split years: 2001-01-01..2001-01-03 "
        "(left out, not filled)" in caplog.text
    )
    assert "'t' lacks" not in caplog.text and "'precip' lacks" not in caplog.text
    assert "split 'train' (2000-2002): 1093 of 1096 days have all three variables" in caplog.text
    assert "split 'test' (2004-2004): all 366 days present" in caplog.text


def test_splits_are_read_one_year_at_a_time(built, tmp_path, monkeypatch):
    """Memory holds a year, not a split: no read asks for more than one year's days."""
    from slams.data import dataset

    _, paths = built
    load, sizes = dataset._Files.load, []

    def recording(self, dates):
        sizes.append((self.name, len(dates), len(set(dates.year))))
        return load(self, dates)

    monkeypatch.setattr(dataset._Files, "load", recording)
    build_dataset(paths["t"], paths["precip"], paths["olr"], tmp_path / "out", SPLITS)
    assert max(n for _, n, _ in sizes) <= 366 and {y for _, _, y in sizes} == {1}
    # Two passes over the 3 training years (statistics, then the split), one over the others.
    assert sum(name == "t" for name, _, _ in sizes) == 3 + 3 + 1 + 1
    xr.testing.assert_equal(
        xr.open_dataset(tmp_path / "out" / "train.nc"),
        xr.open_dataset(built[0] / "out" / "train.nc"),
    )
