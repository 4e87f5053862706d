"""Real-data ingest that never trusts a bad file, offline: replicas of the real products
(NOAA PSL's packed netCDF-3 OLR, CPC's netCDF-4 files) broken the ways real transfers break
them, served from 127.0.0.1; and ERA5 from a local zarr store in WeatherBench 2's layout,
read over HTTP through the same code path as the real store."""

import functools
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from formats import write_cpc, write_olr
from test_download import FAST, leftovers

from slams.config import ConfigError, load_config
from slams.data.classic import classic_size
from slams.data.dataset import _Files
from slams.data.download import (
    DownloadError,
    ValidationError,
    download_cpc,
    download_era5_weatherbench2,
    download_olr,
    validate_source_file,
)
from slams.data.regrid import open_source, regrid_file
from slams.data.weatherbench2 import FULL_37_0P25, WB13_1P5

ROOT = Path(__file__).resolve().parents[1]
DAYS = pd.date_range("2001-01-01", "2001-03-31", freq="D")


@pytest.fixture
def directory_server(tmp_path):
    """A plain static HTTP server (GET and HEAD, like a bucket's HTTPS endpoint) over a
    directory; yields (base URL, directory, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        # keep-alive, as a bucket's endpoint: HTTP/1.0's connection per request makes the
        # zarr client stall about a second now and then
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=served))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served, requests
    httpd.shutdown()
    httpd.server_close()


def classic_olr(path: Path, days=DAYS) -> np.ndarray:
    return write_olr(path, days, packed=True, file_format="NETCDF3_CLASSIC")


# --------------------------------------------------------------------------- truncation


def test_classic_size_is_what_the_header_implies(tmp_path):
    for file_format in ("NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET", "NETCDF3_64BIT_DATA"):
        path = tmp_path / f"{file_format}.nc"
        write_olr(path, DAYS[:11], file_format=file_format)
        assert classic_size(path) == path.stat().st_size  # one record variable: no padding
    write_cpc(tmp_path / "cpc.nc", DAYS[:3])  # netCDF-4 (HDF5): not classic
    assert classic_size(tmp_path / "cpc.nc") is None


@pytest.mark.parametrize("cut", [10_000, 0.5])
def test_a_classic_olr_file_cut_short_is_rejected_at_once(directory_server, cut, tmp_path):
    """netCDF-C reads the missing tail of a classic file as zeros (327.65 W m-2 once
    unpacked): the size check catches it, names the real file, and does not fetch again."""
    base, served, requests = directory_server
    whole = served / "whole.nc"
    classic_olr(whole)
    size = whole.stat().st_size
    keep = size - cut if isinstance(cut, int) else int(size * cut)
    (served / "olr.day.mean.nc").write_bytes(whole.read_bytes()[:keep])
    # netCDF-C itself opens it and reads zeros: what made the check necessary
    with netCDF4.Dataset(served / "olr.day.mean.nc") as nc:
        assert nc["olr"].shape[0] == len(DAYS)
    dest = tmp_path / "downloads" / "olr.day.mean.nc"
    with pytest.raises(ValidationError) as error:
        download_olr(dest, f"{base}/olr.day.mean.nc", FAST)
    message = str(error.value)
    print(message)
    assert "\n" not in message
    assert f"olr.day.mean.nc is cut short: {keep} of the {size} bytes" in message
    assert ".part" not in message and "not retried" in message
    assert requests.count("/olr.day.mean.nc") == 1  # a permanent error: not fetched again
    assert leftovers(dest.parent) == []


def test_a_truncated_netcdf4_file_is_rejected_naming_the_real_file(directory_server, tmp_path):
    base, served, requests = directory_server
    write_cpc(served / "whole.nc", DAYS[:3])
    data = (served / "whole.nc").read_bytes()
    (served / "precip.2001.nc").write_bytes(data[: len(data) * 2 // 3])
    dest = tmp_path / "raw" / "2001.nc"
    with pytest.raises(ValidationError) as error:
        download_cpc(dest, 2001, f"{base}/precip.2001.nc", FAST)
    message = str(error.value)
    print(message)
    assert "2001.nc is not a valid cpc file" in message and ".part" not in message
    assert requests.count("/precip.2001.nc") == 1
    assert leftovers(dest.parent) == []


# --------------------------------------------------------------------------- times


def set_time_value(path: Path, record: int, value: float) -> None:
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"][record] = value


def test_a_record_dated_at_the_time_origin_is_named(tmp_path):
    path = tmp_path / "olr.nc"
    classic_olr(path)
    set_time_value(path, 40, 0.0)  # what a zero-filled record holds
    with pytest.raises(ValidationError) as error:
        validate_source_file(path, "olr")
    message = str(error.value)
    print(message)
    assert "record 40 of 90 is dated at the time origin (1800-01-01" in message


def test_times_going_backwards_or_repeating_are_rejected(tmp_path):
    path = tmp_path / "olr.nc"
    classic_olr(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"][10] = nc["time"][8]  # a day that repeats an earlier one
    with pytest.raises(ValidationError, match="record 10 of 90 is dated 2001-01-09"):
        validate_source_file(path, "olr")
    path = tmp_path / "twice.nc"
    classic_olr(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"][11] = nc["time"][10] + 6.0  # two steps on 2001-01-11
    with pytest.raises(ValidationError, match="several time steps on 2001-01-11"):
        validate_source_file(path, "olr")


# --------------------------------------------------------------------------- empty days


def test_a_present_but_entirely_missing_day_is_reported_and_left_out(tmp_path, caplog):
    path = tmp_path / "olr.nc"
    classic_olr(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc["olr"][20] = np.ma.masked  # the record is there, every value is the fill value
    with caplog.at_level(logging.WARNING):
        days = validate_source_file(path, "olr")
    assert len(days) == len(DAYS)
    assert "1 of 90 days are present but entirely missing (2001-01-21)" in caplog.text
    # the dataset stage treats it as an absent day: out of the dates, reported
    regridded = tmp_path / "regridded.nc"
    regrid_file(path, regridded, "olr", resolution=30.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        files = _Files.index([regridded], "olr")
    assert pd.Timestamp("2001-01-21") not in files.all_dates()
    assert len(files.all_dates()) == len(DAYS) - 1
    assert list(files.empty) == [pd.Timestamp("2001-01-21")]
    assert "'olr': 1 days are present but entirely missing (2001-01-21)" in caplog.text


# --------------------------------------------------------------------------- logs, rules, config


def test_regrid_logs_what_it_did(tmp_path, caplog):
    path = tmp_path / "olr.nc"
    classic_olr(path)
    with caplog.at_level(logging.INFO):
        regrid_file(path, tmp_path / "out.nc", "olr", resolution=30.0)
    assert "(olr): 90 days 2001-01-01..2001-03-31, 73 x 144 grid" in caplog.text
    assert "6 x 12 grid of 30 degree cells (builtin backend), 0.0 % missing" in caplog.text


def test_download_rules_leave_retries_to_the_scripts():
    """Snakemake's `retries` would repeat permanent failures (a missing level cost 3 CDS
    requests, a bad CPC file 4 fetches): the download rules have none."""
    text = (ROOT / "workflow/rules/data.smk").read_text()
    assert "rule download_cpc" in text and "retries:" not in text


@pytest.mark.parametrize(
    ("period", "words"),
    [
        (["2021-12-20", "2022-01-10"], "is not inside the test split (2022)"),
        (["2022-03-10", "2022-03-01"], "2022-03-10 is after 2022-03-01"),
        (["2022-02-30", "2022-03-10"], "day is out of range for month"),
        (["2022-03-01", "2022-03-02"], "2 days are fewer than score.blanket_days 5"),
    ],
)
def test_a_period_outside_the_test_split_is_a_config_error(tmp_path, period, words):
    overlay = tmp_path / "period.yaml"
    overlay.write_text(f"assimilation:\n  period: ['{period[0]}', '{period[1]}']\n")
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "config.yaml", overlay)
    message = str(error.value)
    assert message.startswith("config error at assimilation.period: ") and words in message
    assert "\n" not in message


# --------------------------------------------------------------------------- WeatherBench 2


WB2_LEVELS = [1000.0, 850.0, 500.0, 10.0]
# The two real stores' layouts (slams.data.weatherbench2), on a tiny grid of the same
# orientation: the 0.25 degree store's dims, ERA5's 37 levels and latitude 90..-90, chunks of
# every level (one day of steps: the real store's single step would only make more requests);
# the 1.5 degree store's dims, its 13 levels and latitude -90..90, chunks of 8 steps and every
# level.
LAYOUTS = {
    "0p25": (
        FULL_37_0P25,
        {"dims": ("time", "level", "latitude", "longitude"), "descending": True, "time_chunk": 4},
    ),
    "1p5": (
        WB13_1P5,
        {"dims": ("time", "level", "longitude", "latitude"), "descending": False, "time_chunk": 8},
    ),
}


def write_wb2_store(path: Path, year: int = 2001, resolution: float = 30.0, drop=None,
                    levels=WB2_LEVELS, dims=("time", "level", "longitude", "latitude"),
                    descending=False, time_chunk=124):  # fmt: skip
    """A zarr (v2, consolidated) store in WeatherBench 2's ERA5 layout: ``temperature`` with
    ``dims``, 6-hourly, both poles, latitude ascending unless ``descending``, one chunk per
    ``time_chunk`` steps and all levels; returns the steps and the temperature as ``(time,
    level, lat, lon)`` with latitude ascending, levels in the given order."""
    times = pd.date_range(f"{year}-01-01", f"{year}-12-31 18:00", freq="6h")
    if drop is not None:
        times = times.delete(drop)
    lat = np.linspace(-90, 90, round(180 / resolution) + 1)
    lon = np.arange(0, 360, resolution)
    rng = np.random.default_rng(0)
    t = (250 + 30 * rng.random((len(times), len(levels), lat.size, lon.size))).astype(np.float32)
    stored = xr.DataArray(
        t,
        dims=("time", "level", "latitude", "longitude"),
        coords={
            "time": times,
            "level": np.array(levels, dtype=np.int64),
            "latitude": lat,
            "longitude": lon,
        },
        attrs={"units": "K"},
    )
    if descending:
        stored = stored.isel(latitude=slice(None, None, -1))
    stored = stored.transpose(*dims)
    ds = xr.Dataset({"temperature": stored, "2m_temperature": stored.isel(level=0, drop=True)})
    sizes = dict(stored.sizes, time=time_chunk)
    encoding = {"temperature": {"chunks": tuple(sizes[d] for d in dims)}}
    ds.to_zarr(path, zarr_format=2, consolidated=True, mode="w", encoding=encoding)
    return times, t


def test_era5_from_weatherbench2_over_http(directory_server, tmp_path, caplog):
    base, served, requests = directory_server
    _, t = write_wb2_store(served / "era5.zarr")
    dest = tmp_path / "raw" / "era5" / "2001.nc"
    with caplog.at_level(logging.INFO):
        download_era5_weatherbench2(
            dest, 2001, levels=[850.0, 10.0], url=f"{base}/era5.zarr", resolution=30.0
        )
    assert leftovers(dest.parent) == ["2001.nc"]
    # the same layout as the CDS path: checked by the same validation, read by open_source
    validate_source_file(dest, "era5", year=2001, levels=[10.0, 850.0], complete=True,
                         resolution=30.0)  # fmt: skip
    with xr.open_dataset(dest) as ds:
        assert list(ds["t"].dims) == ["valid_time", "pressure_level", "latitude", "longitude"]
        assert ds["latitude"].values[0] == 90 and ds["latitude"].values[-1] == -90
    da = open_source(dest, "era5").load()
    assert da.sizes["time"] == 365 and list(da["level"].values) == [10.0, 850.0]
    daily = t.reshape(365, 4, *t.shape[1:]).mean(axis=1)  # (day, level, lat, lon)
    # written with 16 significant bits, as the CDS path writes: a relative error below 2**-16
    np.testing.assert_allclose(da.sel(level=850.0).values, daily[:, 1], rtol=2e-5)
    np.testing.assert_allclose(da.sel(level=10.0).values, daily[:, 3], rtol=2e-5)
    # only the two levels were read: no chunk of the unused variable
    assert not any("2m_temperature/" in r for r in requests)
    assert "2001-12: 31 days read" in caplog.text
    # a finished year is not read again
    requests.clear()
    download_era5_weatherbench2(dest, 2001, levels=[850.0, 10.0], url=f"{base}/era5.zarr",
                                resolution=30.0)  # fmt: skip
    assert requests == []


@pytest.mark.parametrize(
    ("levels", "year", "drop", "words"),
    [
        ([850.0, 925.0], 2001, None, "10, 500, 850, 1000 hPa but not 925 hPa: drop 925 hPa"),
        ([850.0], 1990, None, "holds no step of 1990 (it covers 2001-01-01..2001-12-31)"),
        ([850.0], 2001, slice(400, 402), "2001 is incomplete: 0 days without steps, 1 days"),
    ],
)
def test_weatherbench2_problems_fail_in_one_line(directory_server, tmp_path, levels, year, drop,
                                                  words):  # fmt: skip
    base, served, _ = directory_server
    write_wb2_store(served / "era5.zarr", drop=drop)
    dest = tmp_path / "2001.nc"
    with pytest.raises(DownloadError) as error:
        download_era5_weatherbench2(dest, year, levels=levels, url=f"{base}/era5.zarr",
                                    resolution=30.0)  # fmt: skip
    assert words in str(error.value) and "\n" not in str(error.value)
    assert leftovers(tmp_path) == [] or leftovers(tmp_path) == ["served"]


PAPER_LEVELS = load_config(ROOT / "config.yaml")["data"]["levels"]
PRESET_1P5 = ROOT / "presets" / "weatherbench2-1p5.yaml"


@pytest.mark.parametrize("layout", ["0p25", "1p5"])
def test_each_weatherbench2_layout_gives_daily_means_in_the_cds_layout(
    directory_server, tmp_path, monkeypatch, layout
):
    """Each real store's layout, served under its real name over HTTP and read through the
    same code as the real URL, at the levels its config asks for: config.yaml's ten from the
    0.25 degree store, the preset's nine (no 10 hPa) from the 1.5 degree one."""
    base, served, requests = directory_server
    store, layout_options = LAYOUTS[layout]
    _, t = write_wb2_store(served / store.name, levels=store.levels, **layout_options)
    overlay = [PRESET_1P5] if layout == "1p5" else []
    levels = load_config(ROOT / "config.yaml", *overlay)["data"]["levels"]
    assert (10 in levels) == (layout == "0p25") and len(levels) == 10 - (layout == "1p5")
    if layout == "0p25":
        # read as the real 0.25 degree store is, a few days at a time (there: one, 166 MB),
        # here 9 days, which divides no month: blocks end inside months and at their ends
        day_bytes = 4 * len(levels) * 7 * 12 * 4
        monkeypatch.setattr("slams.data.download.WB2_BLOCK_BYTES", 9 * day_bytes)
    dest = tmp_path / "raw" / "era5" / "2001.nc"
    download_era5_weatherbench2(dest, 2001, levels=levels, url=f"{base}/{store.name}")
    assert leftovers(dest.parent) == ["2001.nc"]
    # the CDS layout whatever the store's: dims, latitude 90..-90, levels ascending, float32 K
    with netCDF4.Dataset(dest) as nc:
        assert nc["t"].dimensions == ("valid_time", "pressure_level", "latitude", "longitude")
        assert nc["t"].dtype == np.float32 and nc["t"].units == "K"
        assert list(nc["latitude"][:]) == [90, 60, 30, 0, -30, -60, -90]
        assert list(nc["pressure_level"][:]) == sorted(levels)
    validate_source_file(dest, "era5", year=2001, levels=levels, complete=True, resolution=30.0)
    # the values: each day's mean of its 4 steps at each configured level, on the right rows
    da = open_source(dest, "era5").load()
    daily = t.reshape(365, 4, *t.shape[1:]).mean(axis=1)  # (day, level, lat ascending, lon)
    index = [store.levels.index(level) for level in sorted(levels)]
    np.testing.assert_allclose(da.values, daily[:, index], rtol=2e-5)
    assert not any("2m_temperature/" in r for r in requests)
    if layout == "0p25":  # at 0.25 degrees the file goes through our own regridding
        regridded = tmp_path / "regridded.nc"
        regrid_file(dest, regridded, "era5", resolution=45.0)
        with xr.open_dataset(regridded) as ds:
            assert ds["t"].sizes == {"time": 365, "level": 10, "lat": 4, "lon": 8}
            assert list(ds["level"].values) == sorted(levels)
            assert 250 <= float(ds["t"].min()) and float(ds["t"].max()) <= 280


def test_the_1p5_store_at_the_paper_levels_fails_in_one_line_before_reading_data(
    directory_server, tmp_path
):
    """The 1.5 degree store has no 10 hPa: with config.yaml's levels the job stops once the
    store's metadata are read, naming its levels, the missing one and the ways out."""
    base, served, requests = directory_server
    store, layout_options = LAYOUTS["1p5"]
    write_wb2_store(served / store.name, levels=store.levels, **layout_options)
    dest = tmp_path / "raw" / "2001.nc"
    with pytest.raises(ValidationError) as error:
        download_era5_weatherbench2(dest, 2001, PAPER_LEVELS, url=f"{base}/{WB13_1P5.name}")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"The WeatherBench 2 store {WB13_1P5.name} has the pressure levels 50, 100, 150, 200, "
        "250, 300, 400, 500, 600, 700, 850, 925, 1000 hPa but not 10 hPa: drop 10 hPa from "
        "data.levels (presets/weatherbench2-1p5.yaml does"
    )
    assert message.endswith(f"weatherbench2_url to the 0.25 degree store with all 37 levels, "
                            f"{FULL_37_0P25.url}")  # fmt: skip
    assert not any("/temperature/" in r for r in requests)  # metadata only, no chunk
    assert leftovers(dest.parent) == []


@pytest.mark.parametrize(
    "url",
    [
        WB13_1P5.url,
        f"gs://weatherbench2/datasets/era5/{WB13_1P5.name}/",
        f"/data/mirror/{WB13_1P5.name}",
    ],
)
def test_the_1p5_store_at_the_paper_levels_is_a_config_error(tmp_path, url):
    """Known by name, the 1.5 degree store is checked at validation, before any job runs;
    the preset that drops 10 hPa passes, and so does the 0.25 degree default."""
    overlay = tmp_path / "wb2.yaml"
    overlay.write_text(
        "data: {era5_source: weatherbench2}\n"
        f"download: {{era5: {{weatherbench2_url: '{url}'}}}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "config.yaml", overlay)
    message = str(error.value)
    assert message.startswith(
        f"config error at data.levels: the WeatherBench 2 store {WB13_1P5.name} has the "
        "pressure levels 50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000 hPa "
        "but not 10 hPa: drop 10 hPa from data.levels"
    )
    assert "\n" not in message
    config = load_config(ROOT / "config.yaml", overlay, PRESET_1P5)
    assert config["data"]["levels"] == [50, 100, 200, 300, 500, 700, 850, 925, 1000]
    default = tmp_path / "default.yaml"
    default.write_text("data: {era5_source: weatherbench2}\n")
    config = load_config(ROOT / "config.yaml", default)
    assert config["download"]["era5"]["weatherbench2_url"] == FULL_37_0P25.url


def test_a_store_of_another_name_is_checked_when_its_job_opens_it(tmp_path):
    """Levels are never guessed for a store not known by name: validation passes, and the
    job checks the store's own levels (test_weatherbench2_problems_fail_in_one_line)."""
    overlay = tmp_path / "wb2.yaml"
    overlay.write_text(
        "data: {era5_source: weatherbench2}\n"
        "download: {era5: {weatherbench2_url: 'https://example.org/era5-other.zarr'}}\n"
    )
    assert load_config(ROOT / "config.yaml", overlay)["data"]["levels"] == PAPER_LEVELS


def test_an_unreachable_store_fails_in_one_line(tmp_path):
    with pytest.raises(DownloadError, match="cannot open the WeatherBench 2 store") as error:
        download_era5_weatherbench2(tmp_path / "2001.nc", 2001, [850.0],
                                    url="http://127.0.0.1:9/era5.zarr")  # fmt: skip
    assert "\n" not in str(error.value)


def test_the_weatherbench2_source_replaces_the_cds_jobs_and_regrids(directory_server, tmp_path):
    """With data.era5_source weatherbench2 Snakemake fetches one file per year from the
    store (no monthly CDS requests, no merge) and regrids it like any other ERA5 year: here
    the 1.5 degree store's layout under its real name, with the preset that drops 10 hPa.
    One year is fetched; regrid_file on such a file is run by the 0.25 degree layout's test
    (regridding nine levels of a year took 14 s on the 2-core test machine)."""
    import subprocess
    import sys

    base, served, _ = directory_server
    store, layout_options = LAYOUTS["1p5"]
    write_wb2_store(served / store.name, levels=store.levels, **layout_options)
    overlay = tmp_path / "wb2.yaml"
    overlay.write_text(
        "name: wb2test\n"
        "data: {dataset: wb2test, years: [2000, 2002], era5_source: weatherbench2, "
        "regrid_backend: builtin}\n"
        "split: {train: [2000, 2000], validation: [2001, 2001], test: [2002, 2002]}\n"
        f"download: {{era5: {{weatherbench2_url: '{base}/{store.name}'}}}}\n"
    )
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1"]
    configs = ["--configfile", str(PRESET_1P5), str(overlay)]
    dry = subprocess.run([*command, "-n", *configs], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = {p[0]: int(p[1]) for p in (line.split() for line in dry.stdout.splitlines())
            if len(p) == 2 and p[1].isdigit()}  # fmt: skip
    assert jobs["download_era5_weatherbench2"] == 3 and jobs["regrid"] == 9
    assert "download_era5" not in jobs and "merge_era5" not in jobs
    target = "resources/wb2test/raw/era5/2001.nc"
    run = subprocess.run([*command, target, *configs], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    da = open_source(tmp_path / target, "era5")
    assert da.sizes == {"time": 365, "level": 9, "lat": 7, "lon": 12}
    assert list(da["level"].values) == [50, 100, 200, 300, 500, 700, 850, 925, 1000]
    da.close()
    log = (tmp_path / "resources/wb2test/logs/download/era5-2001.log").read_text()
    assert "365 days, 9 levels, 7 x 12 grid from WeatherBench 2" in log
