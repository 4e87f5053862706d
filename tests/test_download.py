"""Downloads, offline: a local HTTP server for CPC and OLR, a fake cdsapi.Client for ERA5.

The server on 127.0.0.1 serves small files in the real formats (tests/formats.py) and can
fail (HTTP 500), stall, truncate a body or answer 404; the tests check retries, one-line
errors, and that nothing partial survives a failure.
"""

import logging
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import netCDF4
import numpy as np
import pandas as pd
import pytest
import requests
import xarray as xr
from formats import write_cpc, write_era5, write_olr

from slams.config import ConfigError, load_config
from slams.data import download
from slams.data.download import (
    CredentialsError,
    DownloadError,
    HttpOptions,
    RequestSlots,
    ValidationError,
    download_cpc,
    download_era5_month,
    download_olr,
    era5_request,
    extract_olr_year,
    merge_era5_year,
    validate_source_file,
)
from slams.data.regrid import open_source

FAST = HttpOptions(connect_timeout_s=2, read_timeout_s=0.5, retries=2, backoff_s=0.01)
LEVELS = [850.0, 10.0]  # deliberately not sorted: the request sorts them


# --------------------------------------------------------------------------- the server


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (behaviour, body)``; counts requests per path.

    Behaviours: ``ok``; ``fail:N`` (HTTP 500 for the first N requests, then ok); ``stall``
    (half the body, then silence); ``truncate:N`` (the first N answers announce the full
    length but stop at half); ``nolength`` (half the body, no Content-Length); ``404``.
    """

    def do_GET(self):
        routes, hits = self.server.routes, self.server.hits
        if self.path not in routes:
            self.send_error(404)
            return
        hits[self.path] = hits.get(self.path, 0) + 1
        behaviour, body = routes[self.path]
        kind, _, count = behaviour.partition(":")
        count = int(count or 0)
        if kind == "404":
            self.send_error(404)
        elif kind == "fail" and hits[self.path] <= count:
            self.send_error(500, "Internal Server Error")
        elif kind == "stall":
            self._head(len(body))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(2.0)  # longer than the client's read timeout
        elif (kind == "truncate" and hits[self.path] <= count) or kind == "nolength":
            self._head(None if kind == "nolength" else len(body))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._head(len(body))
            self.wfile.write(body)

    def _head(self, length):
        self.send_response(200)
        self.send_header("Content-Type", "application/x-netcdf")
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real-format files: CPC 2001 (3 days), OLR 2000-12-30..2002-01-02 with a gap, a bad file."""
    root = tmp_path_factory.mktemp("served")
    cpc_days = pd.date_range("2001-01-01", periods=3, freq="D")
    olr_days = pd.date_range("2000-12-30", "2002-01-02", freq="D")
    olr_days = olr_days.delete(slice(40, 43))  # 2001-02-08..10 missing from the record
    out = {
        "cpc": write_cpc(root / "precip.2001.nc", cpc_days),
        "olr": write_olr(root / "olr.day.mean.nc", olr_days, packed=True),
        "olr_days": olr_days,
    }
    write_olr(root / "olr-float.nc", olr_days[:5], packed=False)
    bad = xr.Dataset({"rain": (("time",), np.ones(3))}, coords={"time": cpc_days})
    bad.to_netcdf(root / "bad.nc")
    out["bytes"] = {p.name: p.read_bytes() for p in root.iterdir()}
    return out


@pytest.fixture
def server(files):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.hits = {}, {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(path, name, behaviour="ok"):
        httpd.routes[path] = (behaviour, files["bytes"][name])
        return base + path

    httpd.serve, httpd.base = serve, base
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------- HTTP


def test_cpc_download_is_validated_renamed_and_never_fetched_again(server, files, tmp_path):
    url = server.serve("/cpc/precip.2001.nc", "precip.2001.nc")
    dest = tmp_path / "raw" / "cpc" / "2001.nc"
    download_cpc(dest, 2001, server.base + "/cpc/precip.{year}.nc", FAST)
    assert leftovers(dest.parent) == ["2001.nc"]  # no .part left behind
    da = open_source(dest, "cpc")
    assert da.sizes == {"time": 3, "lat": 360, "lon": 720}
    assert np.array_equal(np.isnan(da.values), np.isnan(files["cpc"][:, ::-1]))  # ocean NaN
    download_cpc(dest, 2001, url, FAST)
    assert server.hits["/cpc/precip.2001.nc"] == 1  # a finished file is never fetched again


def test_server_errors_are_retried_with_backoff(server, tmp_path, caplog):
    url = server.serve("/flaky/precip.2001.nc", "precip.2001.nc", "fail:2")
    with caplog.at_level(logging.WARNING):
        download_cpc(tmp_path / "2001.nc", 2001, url, FAST)
    assert server.hits["/flaky/precip.2001.nc"] == 3
    assert caplog.text.count("HTTP 500") == 2 and "retrying" in caplog.text
    assert leftovers(tmp_path) == ["2001.nc"]


def test_backoff_doubles(server, tmp_path, monkeypatch):
    pauses = []
    monkeypatch.setattr(download.time, "sleep", pauses.append)
    url = server.serve("/down/precip.2001.nc", "precip.2001.nc", "fail:99")
    options = HttpOptions(retries=3, backoff_s=2.0, max_backoff_s=5.0)
    with pytest.raises(DownloadError):
        download_cpc(tmp_path / "2001.nc", 2001, url, options)
    assert pauses == [2.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("behaviour", "hits", "words"),
    [
        ("stall", 3, "timed out"),
        ("truncate:99", 3, "body cut off"),
        ("nolength", 3, "not a valid cpc file"),
        ("fail:99", 3, "HTTP 500"),
        ("404", 1, "HTTP 404"),
    ],
)
def test_broken_downloads_fail_in_one_line_and_leave_nothing(
    server, tmp_path, behaviour, hits, words
):
    path = f"/{behaviour.replace(':', '')}/precip.2001.nc"
    url = server.serve(path, "precip.2001.nc", behaviour)
    dest = tmp_path / "raw" / "2001.nc"
    with pytest.raises(DownloadError) as error:
        download_cpc(dest, 2001, url, FAST)
    message = str(error.value)
    assert "\n" not in message and url in message and words in message
    if behaviour != "404":
        assert "failed after 3 attempts" in message
    assert server.hits[path] == hits  # 404 is final at once; the rest are retried
    assert leftovers(dest.parent) == []  # neither 2001.nc nor .2001.nc.part


def test_a_truncated_body_is_fetched_again(server, tmp_path):
    url = server.serve("/once/precip.2001.nc", "precip.2001.nc", "truncate:1")
    download_cpc(tmp_path / "2001.nc", 2001, url, FAST)
    assert server.hits["/once/precip.2001.nc"] == 2
    validate_source_file(tmp_path / "2001.nc", "cpc", year=2001)


def test_a_stale_part_file_is_not_trusted(server, tmp_path):
    url = server.serve("/cpc/precip.2001.nc", "precip.2001.nc")
    (tmp_path / ".2001.nc.part").write_bytes(b"half a file from a killed run")
    download_cpc(tmp_path / "2001.nc", 2001, url, FAST)
    assert leftovers(tmp_path) == ["2001.nc"]
    validate_source_file(tmp_path / "2001.nc", "cpc", year=2001)


def test_a_file_with_the_wrong_content_is_rejected(server, tmp_path):
    url = server.serve("/bad/precip.2001.nc", "bad.nc")
    with pytest.raises(DownloadError, match="no variable 'precip'"):
        download_cpc(tmp_path / "2001.nc", 2001, url, FAST)
    assert leftovers(tmp_path) == []
    # The year is checked too: a file of another year is not accepted as 2002.
    url = server.serve("/cpc/precip.2002.nc", "precip.2001.nc")
    with pytest.raises(DownloadError, match="outside 2002-01-01"):
        download_cpc(tmp_path / "2002.nc", 2002, url, FAST)


def test_olr_download_and_extraction_keep_the_packed_format(server, files, tmp_path, caplog):
    url = server.serve("/olr/olr.day.mean.nc", "olr.day.mean.nc")
    whole = tmp_path / "downloads" / "olr.day.mean.nc"
    download_olr(whole, url, FAST)
    with caplog.at_level(logging.WARNING):
        extract_olr_year(whole, tmp_path / "raw" / "2001.nc", 2001)
    assert "OLR 2001: 3 of 365 days missing (2001-02-08..2001-02-10)" in caplog.text
    with netCDF4.Dataset(tmp_path / "raw" / "2001.nc") as nc:
        assert nc["olr"].dtype == np.int16 and nc["olr"].scale_factor == pytest.approx(0.01)
    da = open_source(tmp_path / "raw" / "2001.nc", "olr")
    days = files["olr_days"]
    expected = files["olr"][days.year == 2001][:, ::-1]  # open_source: lat ascending
    assert da.sizes["time"] == 362 and np.abs(da.values - expected).max() <= 0.006
    with pytest.raises(DownloadError, match="holds no day of 1999") as error:
        extract_olr_year(whole, tmp_path / "raw" / "1999.nc", 1999)
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path / "raw") == ["2001.nc"]


def test_olr_as_noaa_serves_it_since_2020_float_not_packed(server, tmp_path):
    url = server.serve("/olr/olr-float.nc", "olr-float.nc")
    download_olr(tmp_path / "olr.nc", url, FAST)
    extract_olr_year(tmp_path / "olr.nc", tmp_path / "2001.nc", 2001)
    with netCDF4.Dataset(tmp_path / "2001.nc") as nc:
        assert nc["olr"].dtype == np.float32
    assert open_source(tmp_path / "2001.nc", "olr").sizes["time"] == 3


# --------------------------------------------------------------------------- ERA5 via the CDS


NETCDF_LOCK = threading.Lock()


class FakeClient:
    """Stands in for cdsapi.Client: checks the request, writes a CDS-style netCDF."""

    calls: ClassVar[list] = []
    active = 0
    most_active = 0
    lock = threading.Lock()
    behaviour = "ok"
    pause_s = 0.0

    def __init__(self, url=None, key=None, **kwargs):
        self.url, self.key, self.kwargs = url, key, kwargs

    def retrieve(self, name, request, target):
        cls = type(self)
        with cls.lock:
            cls.calls.append((name, request, self.url, self.key))
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
        try:
            time.sleep(cls.pause_s)
            if cls.behaviour == "401":
                response = requests.Response()
                response.status_code = 401
                raise requests.HTTPError("401 Client Error: Unauthorized", response=response)
            year, month = int(request["year"]), int(request["month"][0])
            days = pd.to_datetime([f"{year}-{month:02d}-{d}" for d in request["day"]])
            if cls.behaviour == "missing-day":
                days = days[:-1]
            levels = [float(level) for level in request["pressure_level"]]
            if cls.behaviour == "zip":
                write_era5(Path(target + ".nc"), days, levels)
                with zipfile.ZipFile(target, "w") as archive:
                    archive.write(target + ".nc", "data_stream-oper_stepType-instant.nc")
                Path(target + ".nc").unlink()
            else:
                with NETCDF_LOCK:
                    write_era5(Path(target), days, levels)
        finally:
            with cls.lock:
                cls.active -= 1
        return target


@pytest.fixture
def cds(monkeypatch, tmp_path):
    import cdsapi

    monkeypatch.setattr(cdsapi, "Client", FakeClient)
    monkeypatch.setenv("CDSAPI_URL", "https://cds.example.invalid/api")
    monkeypatch.setenv("CDSAPI_KEY", "0000aaaa-bbbb-cccc-dddd-eeeeffff0000")
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-such-cdsapirc"))
    FakeClient.calls, FakeClient.active, FakeClient.most_active = [], 0, 0
    FakeClient.behaviour, FakeClient.pause_s = "ok", 0.0
    return FakeClient


def fetch_month(tmp_path, year=2001, month=2, **kwargs):
    dest = tmp_path / "downloads" / f"{year}-{month:02d}.nc"
    options = {"slots_dir": tmp_path / "slots", "poll_s": 0.01, "resolution": 10.0} | kwargs
    return download_era5_month(dest, year, month, LEVELS, **options)


def test_era5_request_is_the_daily_mean_product_per_month():
    assert era5_request(2000, 2, LEVELS) == {
        "product_type": "reanalysis",
        "variable": ["temperature"],
        "year": "2000",
        "month": ["02"],
        "day": [f"{day:02d}" for day in range(1, 30)],  # a leap year
        "pressure_level": ["10", "850"],
        "daily_statistic": "daily_mean",
        "time_zone": "utc+00:00",
        "frequency": "1_hourly",
    }


def test_era5_month_through_the_fake_client(cds, tmp_path):
    dest = fetch_month(tmp_path)
    ((name, request, url, key),) = cds.calls
    assert name == "derived-era5-pressure-levels-daily-statistics"
    assert request == era5_request(2001, 2, LEVELS)
    assert (url, key) == ("https://cds.example.invalid/api", "0000aaaa-bbbb-cccc-dddd-eeeeffff0000")
    da = open_source(dest, "era5")
    assert da.sizes["time"] == 28 and list(da["level"].values) == [10.0, 850.0]
    assert leftovers(dest.parent) == ["2001-02.nc"]
    fetch_month(tmp_path)
    assert len(cds.calls) == 1  # resumable: a finished month is never requested again


def test_era5_zip_answers_are_unpacked(cds, tmp_path):
    cds.behaviour = "zip"
    assert open_source(fetch_month(tmp_path), "era5").sizes["time"] == 28


def test_era5_month_missing_a_day_leaves_nothing(cds, tmp_path):
    cds.behaviour = "missing-day"
    with pytest.raises(ValidationError, match="1 of 28 days missing"):
        fetch_month(tmp_path)
    assert leftovers(tmp_path / "downloads") == []


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("none", "no CDS credentials found"),
        ("legacy", "'UID:KEY' pair of the retired CDS"),
        ("rejected", "rejected the credentials (HTTP 401)"),
    ],
)
def test_credential_problems_fail_at_once_in_one_line(cds, tmp_path, monkeypatch, setup, words):
    if setup != "rejected":
        monkeypatch.delenv("CDSAPI_URL")
        monkeypatch.delenv("CDSAPI_KEY")
    if setup == "legacy":
        rc = tmp_path / "cdsapirc"
        rc.write_text("url: https://cds.climate.copernicus.eu/api/v2\nkey: 12345:abcdef-0123\n")
        monkeypatch.setenv("CDSAPI_RC", str(rc))
    cds.behaviour = "401" if setup == "rejected" else "ok"
    with pytest.raises(CredentialsError) as error:
        fetch_month(tmp_path)
    message = str(error.value)
    assert words in message and "\n" not in message
    assert "~/.cdsapirc" in message and "make demo" in message
    assert len(cds.calls) == (1 if setup == "rejected" else 0)  # nothing sent without a key
    assert leftovers(tmp_path / "downloads") == []


def test_era5_requests_in_flight_are_limited(cds, tmp_path, monkeypatch):
    # Threads stand in for the download jobs (processes in the workflow); netCDF/HDF5 is not
    # thread-safe, so the file work is serialised while the requests themselves overlap.
    validate = download.validate_source_file

    def serialised(*args, **kwargs):
        with NETCDF_LOCK:
            return validate(*args, **kwargs)

    monkeypatch.setattr(download, "validate_source_file", serialised)
    cds.pause_s = 0.15
    threads = [
        threading.Thread(
            target=fetch_month, args=(tmp_path, 2001, month), kwargs={"max_in_flight": 2}
        )
        for month in range(1, 6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cds.calls) == 5 and cds.most_active == 2
    assert len(leftovers(tmp_path / "downloads")) == 5


def test_request_slots_are_released_by_a_dying_holder(tmp_path):
    with RequestSlots(tmp_path, 1, poll_s=0.01):
        pass
    # A process killed while holding a slot releases its lock with its file descriptor.
    code = (
        "import os, sys; from slams.data.download import RequestSlots; "
        f"s = RequestSlots({str(tmp_path)!r}, 1); s.__enter__(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (RequestSlots(tmp_path, 1, 0.01).__enter__(), done.set())
    )
    thread.start()
    thread.join(timeout=5)
    assert done.is_set()


def test_merge_era5_year_streams_the_months_into_one_file(tmp_path):
    months = []
    for month in range(12, 0, -1):  # any order
        last = pd.Timestamp(f"2001-{month:02d}-01").days_in_month
        days = pd.date_range(f"2001-{month:02d}-01", f"2001-{month:02d}-{last}", freq="D")
        months.append(tmp_path / f"2001-{month:02d}.nc")
        write_era5(months[-1], days, LEVELS)
    dest = tmp_path / "raw" / "2001.nc"
    merge_era5_year(months, dest, 2001, resolution=10.0)
    merged = open_source(dest, "era5").load()
    assert merged.sizes["time"] == 365 and list(merged["level"].values) == [10.0, 850.0]
    assert merged.indexes["time"].is_monotonic_increasing
    day = pd.Timestamp("2001-07-04")
    single = xr.open_dataset(tmp_path / "2001-07.nc")["t"].sel(valid_time=day)
    expected = single.sel(pressure_level=10.0).values[::-1]  # open_source: lat ascending
    assert np.allclose(merged.sel(time=day, level=10.0).values, expected, rtol=2**-15)
    with xr.open_dataset(dest) as raw:  # the CDS layout is kept
        assert raw["t"].dims == ("valid_time", "pressure_level", "latitude", "longitude")
        assert raw["latitude"].values[0] == 90.0
    with pytest.raises(ValidationError, match="1 of 365 days missing"):
        merge_era5_year(months[1:], tmp_path / "raw" / "2001b.nc", 2001, resolution=10.0)
    assert leftovers(tmp_path / "raw") == ["2001.nc"]


# --------------------------------------------------------------------------- configuration


def test_download_config_has_defaults_and_checks_urls(root, tmp_path):
    config = load_config(root / "config.yaml")
    download_config = config["download"]
    assert "{year}" in download_config["cpc"]["url"]
    assert download_config["olr"]["url"].endswith("interp_OLR/olr.day.mean.nc")
    assert download_config["era5"]["max_requests_in_flight"] >= 1
    assert HttpOptions(**download_config["http"]).retries == download_config["http"]["retries"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  cpc:\n    url: https://example.org/precip.nc\n")
    with pytest.raises(ConfigError, match=r"config error at download\.cpc\.url"):
        load_config(root / "config.yaml", bad)


def test_paper_dry_run_lists_the_download_jobs(root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-n", "--cores", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    years = 2022 - 2000 + 1
    assert counts["download_era5"] == 12 * years and counts["merge_era5"] == years
    assert counts["download_cpc"] == counts["extract_olr"] == years
    assert counts["download_olr"] == 1 and counts["regrid"] == 3 * years
    # the paper's grid, (5 coarsen + 5 noise + 4 gap) cells, under 2 protocols: 7 methods
    # under paper, 9 (with pixel-both and oi-both) under physical. noise-0.1 repeats
    # coarsen-4's setting, and pixel, oi and climatology observe the same way under both
    # protocols: 13 distinct settings x (3 + pixel-both + oi-both + 4 latent x 2 protocols)
    # computed, the rest are copies
    # (pixel, oi and climatology once for both protocols): the diffusion methods on a GPU, OI
    # and the climatology (rule assimilate_classical) on CPUs
    assert counts["assimilate"] == 13 * (1 + 1 + 8)
    assert counts["assimilate_classical"] == 13 * (2 + 1)
    assert counts["same_analysis"] == 14 * (7 + 9) - 13 * 13
    assert counts["oi_background"] == 2
    assert counts["train_autoencoder"] == counts["encode"] == 4 and counts["train_score"] == 6
    assert counts["case_figure"] == 8  # figures 3-6 under each protocol
    assert counts["protocol_figures"] == 2
    assert counts["total"] == 672  # the README's table


def test_real_source_rules_fetch_extract_and_regrid_from_a_local_server(root, server, tmp_path):
    """The download_cpc, download_olr, extract_olr and regrid rules, run by Snakemake against
    the local server (the URLs are config), produce the raw and regridded files."""
    server.serve("/cpc/precip.2001.nc", "precip.2001.nc", "fail:1")  # one retry on the way
    server.serve("/olr/olr.day.mean.nc", "olr.day.mean.nc")
    overlay = tmp_path / "real.yaml"
    overlay.write_text(
        "name: realtest\n"
        "data: {dataset: realtest, years: [2000, 2002], regrid_backend: builtin}\n"
        "split: {train: [2000, 2000], validation: [2001, 2001], test: [2002, 2002]}\n"
        "download:\n"
        f"  cpc: {{url: '{server.base}/cpc/precip.{{year}}.nc'}}\n"
        f"  olr: {{url: '{server.base}/olr/olr.day.mean.nc'}}\n"
        "  http: {retries: 2, backoff_s: 0.01, read_timeout_s: 5}\n"
    )
    targets = [f"resources/realtest/regridded-1.5deg/{s}/2001.nc" for s in ("cpc", "olr")]
    command = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--cores", "2"]
    result = subprocess.run(
        [*command, *targets, "--configfile", str(overlay)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert server.hits == {"/cpc/precip.2001.nc": 2, "/olr/olr.day.mean.nc": 1}
    resources = tmp_path / "resources" / "realtest"
    assert (resources / "downloads" / "olr" / "olr.day.mean.nc").exists()
    precip = xr.open_dataset(tmp_path / targets[0])["precip"]
    olr = xr.open_dataset(tmp_path / targets[1])["olr"]
    assert precip.sizes == {"time": 3, "lat": 120, "lon": 240} and olr.sizes["time"] == 362
    assert 0.05 < float(precip.notnull().mean()) < 0.3 and bool(olr.notnull().all())
