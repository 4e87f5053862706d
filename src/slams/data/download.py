"""Downloads of the real sources: ERA5 from the Copernicus CDS, CPC and OLR from NOAA PSL.

Every file is written under a temporary name beside its destination (``.<name>.part``),
validated, and only then renamed to its final name with ``os.replace`` (atomic on one file
system). An interrupted, truncated or otherwise broken download therefore leaves no file under
the final name: a rerun finds nothing it could mistake for a finished download, deletes any
stale ``.part`` file and starts again. A file that exists under its final name is finished and
is never fetched again.

Validation (:func:`validate_source_file`) opens the file with :func:`slams.data.regrid.open_source`
(the variable, its units and dims, daily time steps), checks the grid spacing, the global
coverage, the dates (year, month, strictly increasing) and the pressure levels, and reads every
value once, so that a file whose header is intact but whose data were cut off is rejected too;
a classic-format file (netCDF-3) is first checked against the size its header implies
(:mod:`slams.data.classic`), since netCDF-C reads a missing tail as zeros.

- ERA5 (:func:`download_era5_month`): one CDS request per month of the daily-mean product
  ``derived-era5-pressure-levels-daily-statistics`` (:func:`era5_request`), at most
  ``max_in_flight`` requests at once over all processes that share ``slots_dir``
  (:class:`RequestSlots`); :func:`merge_era5_year` streams the twelve months into one file.
- CPC and OLR (:func:`fetch_http`): HTTP GET with connect/read timeouts, retries with
  exponential backoff on transient failures only (connection errors, timeouts, HTTP 429/5xx,
  bodies shorter than announced); a 4xx answer (e.g. 404) and an invalid file fail at once,
  and the workflow's download rules have no Snakemake ``retries`` on top. NOAA serves all OLR
  years in one file: :func:`extract_olr_year` cuts one year out of it, keeping its packed
  16-bit encoding.
- ERA5 without a CDS account (:func:`download_era5_weatherbench2`): one year at a time from
  WeatherBench 2's public zarr store, the daily means of its 6-hourly steps, in the layout of
  :func:`merge_era5_year`.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from slams.data.classic import check_classic_size
from slams.data.dataset import describe_dates
from slams.data.regrid import open_source
from slams.data.weatherbench2 import FULL_37_0P25, missing_levels

logger = logging.getLogger(__name__)

ERA5_DATASET = "derived-era5-pressure-levels-daily-statistics"
CDS_URL = "https://cds.climate.copernicus.eu/api"
CPC_URL = "https://downloads.psl.noaa.gov/Datasets/cpc_global_precip/precip.{year}.nc"
OLR_URL = "https://downloads.psl.noaa.gov/Datasets/interp_OLR/olr.day.mean.nc"
# Grid spacing (degrees) of each source as served; ERA5 comes at its native 0.25 degrees.
RESOLUTION = {"era5": 0.25, "cpc": 0.5, "olr": 2.5}
# Physically possible ranges: a value outside means a broken file, not weather.
PLAUSIBLE = {"era5": (150.0, 350.0), "cpc": (0.0, 2000.0), "olr": (50.0, 500.0)}
CREDENTIALS_HELP = (
    "put the two lines 'url: https://cds.climate.copernicus.eu/api' and "
    "'key: <your personal access token>' (from your CDS profile page) into ~/.cdsapirc, or set "
    "CDSAPI_URL and CDSAPI_KEY, and accept the ERA5 licence on the dataset's page; "
    "to run the workflow without downloads use `make demo` (embedded synthetic data)"
)
_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download or its validation failed; the message is one line saying what to do."""


class CredentialsError(DownloadError):
    """CDS credentials are missing, malformed or rejected."""


class ValidationError(DownloadError):
    """A downloaded file is not what the source should deliver."""


def _one_line(error: BaseException | str) -> str:
    """The message of an exception (or text) on one line, shortened."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _name(path: Path) -> str:
    """The name a file has (or will have) once finished: ``.x.nc.part`` -> ``x.nc``."""
    name = path.name
    if name.startswith(".") and name.endswith(".part"):
        return name[1 : -len(".part")]
    return name


def _part(path: Path) -> Path:
    """The temporary name of ``path`` while it is downloaded or written."""
    return path.with_name(f".{path.name}.part")


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` atomically.

    Any exception removes the temporary file, so that nothing half-written survives.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    part.unlink(missing_ok=True)  # a stale leftover of a killed run: never trusted
    try:
        yield part
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


# --------------------------------------------------------------------------- validation


def _check_spacing(values: np.ndarray, resolution: float, axis: str, name: str) -> None:
    steps = np.abs(np.diff(np.asarray(values, dtype=np.float64)))
    if steps.size == 0 or not np.allclose(steps, resolution, atol=1e-3 * resolution):
        found = f"{steps.min():g}..{steps.max():g}" if steps.size else "a single value"
        raise ValidationError(f"{name}: {axis} spacing {found} degrees, expected {resolution:g}")


def _expected_days(year: int | None, month: int | None) -> pd.DatetimeIndex | None:
    if year is None:
        return None
    if month is None:
        return pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    last = calendar.monthrange(year, month)[1]
    return pd.date_range(f"{year}-{month:02d}-01", f"{year}-{month:02d}-{last}", freq="D")


def validate_source_file(
    path: str | Path,
    source: str,
    *,
    year: int | None = None,
    month: int | None = None,
    levels: list[float] | None = None,
    complete: bool = False,
    resolution: float | None = None,
    read_values: bool = True,
) -> pd.DatetimeIndex:
    """Check that ``path`` is a sound ``era5`` | ``cpc`` | ``olr`` file; return its days.

    Checks: it opens as netCDF with the source's variable, units and dims (via
    :func:`open_source`), one time step per day; lat and lon on a regular grid of
    ``resolution`` (default :data:`RESOLUTION`) covering the globe; every day in ``year``
    (and ``month``), and with ``complete`` every day of that period present; the pressure
    levels equal ``levels`` (ERA5); with ``read_values``, every value readable and, where not
    missing, inside the physically possible range, and ERA5 temperature never missing.
    Raises :class:`ValidationError` with a one-line message.
    """
    path = Path(path)
    name = _name(path)
    resolution = RESOLUTION[source] if resolution is None else resolution
    try:
        short = check_classic_size(path)
    except ValueError as error:
        raise ValidationError(f"{name}: unreadable netCDF header ({error})") from None
    if short is not None:
        # netCDF-C would read the missing tail as zeros (for packed data: add_offset)
        actual, expected = short
        raise ValidationError(
            f"{name} is cut short: {actual} of the {expected} bytes its header implies "
            f"({expected - actual} missing)"
        )
    try:
        da = open_source(path, source)
    except Exception as error:  # not netCDF, truncated HDF5, wrong variable or units, times
        text = _one_line(error).replace(str(path), name)
        raise ValidationError(f"{name} is not a valid {source} file: {text}") from None
    try:
        _check_spacing(da["lat"].values, resolution, "latitude", name)
        _check_spacing(da["lon"].values, resolution, "longitude", name)
        lat, lon = da["lat"].values, da["lon"].values
        if lat.min() > -90 + resolution or lat.max() < 90 - resolution:
            raise ValidationError(
                f"{name}: latitudes {lat.min():g}..{lat.max():g} do not cover the globe"
            )
        if lon.size * resolution < 360 - 1e-6:
            raise ValidationError(f"{name}: {lon.size} longitudes do not cover 360 degrees")
        days = da.indexes["time"]
        if len(days) == 0:
            raise ValidationError(f"{name}: no time steps")
        expected = _expected_days(year, month)
        if expected is not None:
            outside = days.difference(expected)
            if len(outside):
                raise ValidationError(
                    f"{name}: {len(outside)} days outside {expected[0].date()}.."
                    f"{expected[-1].date()} (first {outside[0].date()})"
                )
            missing = expected.difference(days)
            if complete and len(missing):
                raise ValidationError(
                    f"{name}: {len(missing)} of {len(expected)} days missing "
                    f"(first {missing[0].date()})"
                )
        if levels is not None:
            found = sorted(float(v) for v in da["level"].values)
            wanted = sorted(float(v) for v in levels)
            if len(found) != len(wanted) or not np.allclose(found, wanted):
                raise ValidationError(f"{name}: pressure levels {found}, expected {wanted}")
        if not read_values:
            return days
        low, high = PLAUSIBLE[source]
        # Read every value once, a block of days at a time (memory ~ 64 MiB of float32).
        step = max(1, (1 << 24) // max(1, int(np.prod(da.shape[1:]))))
        n_valid = 0
        empty = []
        for start in range(0, da.sizes["time"], step):
            try:
                block = da.isel(time=slice(start, start + step)).values
            except Exception as error:  # data cut off behind an intact header
                text = _one_line(error).replace(str(path), name)
                raise ValidationError(f"{name}: data unreadable from day {start}: {text}") from None
            finite = np.isfinite(block)
            empty.extend(start + np.flatnonzero(~finite.reshape(len(block), -1).any(axis=1)))
            if source == "era5" and not finite.all():
                raise ValidationError(f"{name}: temperature has missing values")
            n_valid += int(finite.sum())
            if finite.any():
                values = block[finite]
                if values.min() < low or values.max() > high:
                    raise ValidationError(
                        f"{name}: values {values.min():g}..{values.max():g} "
                        f"{da.attrs['units']} outside the possible {low:g}..{high:g}"
                    )
        if n_valid == 0:
            raise ValidationError(f"{name}: every value is missing")
        if empty:
            logger.warning(
                "%s: %d of %d days are present but entirely missing (%s): the dataset stage "
                "treats them as absent days",
                name,
                len(empty),
                len(days),
                describe_dates(days[np.asarray(empty)]),
            )
        return days
    finally:
        da.close()


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts (seconds), retries and backoff of :func:`fetch_http`.

    Attempt ``k`` (0-based) that fails transiently is followed by a pause of
    ``min(backoff_s * 2**k, max_backoff_s)`` seconds; ``retries`` further attempts follow the
    first. ``read_timeout_s`` bounds each wait for data, so a stalled server is abandoned.
    """

    connect_timeout_s: float = 30.0
    read_timeout_s: float = 120.0
    retries: int = 5
    backoff_s: float = 10.0
    max_backoff_s: float = 600.0
    progress: bool | None = None  # None: a progress bar only on a terminal


class _Transient(Exception):
    """A failure worth another attempt (server error, timeout, truncated body)."""


def _get(session, url: str, part: Path, options: HttpOptions) -> bool:
    """One GET of ``url`` into ``part``; raises _Transient, DownloadError (final) or OSError.
    Returns whether the body's length could be checked (the server sent a Content-Length)."""
    import requests
    from tqdm import tqdm

    timeout = (options.connect_timeout_s, options.read_timeout_s)
    try:
        with session.get(url, stream=True, timeout=timeout) as response:
            status = response.status_code
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status} {response.reason}")
            if status != 200:
                raise DownloadError(
                    f"{url} answered HTTP {status} {response.reason}: check the URL "
                    "(download.* in the config)"
                )
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            received = 0
            with (
                open(part, "wb") as file,
                tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removeprefix(".").removesuffix(".part"),
                    disable={True: False, False: True, None: None}[options.progress],
                    leave=False,
                ) as bar,
            ):
                for chunk in response.iter_content(_CHUNK_BYTES):
                    file.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected is not None and received != expected:
                raise _Transient(f"body cut off: {received} of {expected} bytes")
            return expected is not None
    except requests.exceptions.ChunkedEncodingError as error:
        raise _Transient(f"body cut off ({_one_line(error)})") from error
    except requests.exceptions.RequestException as error:
        # Connection refused or reset, timeouts, a body cut off mid-stream.
        raise _Transient(_one_line(error)) from error


def fetch_http(
    url: str,
    dest: str | Path,
    validate: Callable[[Path], object],
    options: HttpOptions | None = None,
    session=None,
) -> Path:
    """Download ``url`` to ``dest`` unless it exists: temporary name, ``validate``, rename.

    ``validate(path)`` raises (e.g. :class:`ValidationError`) when the file is not acceptable;
    an invalid file is treated like a truncated one and fetched again, up to
    ``options.retries`` more times. Only transient failures are retried (connection errors,
    timeouts and stalls, HTTP 429 and 5xx, a body shorter than its Content-Length); HTTP 4xx
    other than 429 (e.g. 404) and a file that fails ``validate`` although it arrived whole
    (as long as its Content-Length said) fail at once: the server would send the same again;
    an invalid file sent without a Content-Length may have been cut off and is retried.
    Raises :class:`DownloadError` (a :class:`ValidationError` for an invalid file) with one
    line naming the URL or file and the failure; no file is left under ``dest`` or its
    temporary name after a failure.
    """
    import requests

    dest = Path(dest)
    options = options or HttpOptions()
    if dest.exists():
        logger.info("%s exists: not fetched again", dest)
        return dest
    session = session or requests.Session()
    attempts = options.retries + 1
    last = "no attempt"
    for attempt in range(attempts):
        try:
            with _staged(dest) as part:
                logger.info("fetching %s (attempt %d of %d)", url, attempt + 1, attempts)
                started = time.monotonic()
                complete = _get(session, url, part, options)
                try:
                    validate(part)
                except ValidationError as error:
                    if not complete:  # no Content-Length: the transfer may have been cut off
                        raise _Transient(f"invalid file ({_one_line(error)})") from None
                    raise ValidationError(
                        f"{url} sent an invalid file ({_one_line(error)}); not retried: it "
                        "arrived whole, so the server would send the same again"
                    ) from None
                size = part.stat().st_size
            logger.info(
                "%s: %.1f MiB in %.0f s, valid", dest, size / 2**20, time.monotonic() - started
            )
            return dest
        except _Transient as error:
            last = _one_line(error)
        if attempt + 1 < attempts:
            pause = min(options.backoff_s * 2**attempt, options.max_backoff_s)
            logger.warning("%s: %s; retrying in %.1f s", url, last, pause)
            time.sleep(pause)
    raise DownloadError(f"download of {url} failed after {attempts} attempts: {last}")


def download_cpc(
    dest: str | Path, year: int, url: str = CPC_URL, options: HttpOptions | None = None
) -> Path:
    """CPC daily precipitation of ``year`` (0.5 degrees, land only) to ``dest``.

    ``url`` may hold ``{year}``. The file must hold only days of ``year``; a year that is
    still running may be incomplete (reported here, and again by the dataset stage).
    """
    url = url.format(year=year)

    def validate(path: Path) -> None:
        days = validate_source_file(path, "cpc", year=year)
        _report_missing(days, _expected_days(year, None), f"CPC {year}")

    return fetch_http(url, dest, validate, options)


def download_olr(dest: str | Path, url: str = OLR_URL, options: HttpOptions | None = None) -> Path:
    """NOAA interpolated daily OLR (2.5 degrees, every year in one file) to ``dest``."""

    def validate(path: Path) -> None:
        days = validate_source_file(path, "olr")
        logger.info("%s holds %d days, %s..%s", url, len(days), days[0].date(), days[-1].date())

    return fetch_http(url, dest, validate, options)


def _report_missing(days: pd.DatetimeIndex, expected: pd.DatetimeIndex, what: str) -> None:
    missing = expected.difference(days)
    if len(missing):
        logger.warning(
            "%s: %d of %d days missing (%s)",
            what,
            len(missing),
            len(expected),
            describe_dates(missing),
        )


def extract_olr_year(src: str | Path, dest: str | Path, year: int) -> Path:
    """Write the days of ``year`` of NOAA's multi-year OLR file to ``dest`` (same format).

    The variable keeps its packed int16 encoding (``scale_factor``, ``add_offset``,
    ``_FillValue``); days missing from the record are reported, never filled. Raises
    :class:`DownloadError` when the file holds no day of ``year``.
    """
    src, dest = Path(src), Path(dest)
    with xr.open_dataset(src, engine="netcdf4") as ds:
        days = ds.indexes["time"]
        if not days.is_monotonic_increasing:
            raise ValidationError(f"{src.name}: time is not increasing")
        index = np.flatnonzero(days.year == year)
        selected = ds.isel(time=slice(index[0], index[-1] + 1) if index.size else slice(0, 0))
        if selected.sizes["time"] == 0:
            raise DownloadError(
                f"{src.name} holds no day of {year} (it covers {days[0].date()}.."
                f"{days[-1].date()}): choose data.years inside that range"
            )
        encoding = {}
        for name in ds.data_vars:
            kept = {
                key: value
                for key, value in ds[name].encoding.items()
                if key in ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value")
            }
            if "_FillValue" in kept:  # one fill marker: missing days stay missing, no clash
                kept.pop("missing_value", None)
            encoding[name] = kept | {"zlib": True, "complevel": 1}
        encoding["time"] = {"units": ds["time"].encoding.get("units"), "dtype": "float64"}
        with _staged(dest) as part:
            selected.load().to_netcdf(part, engine="netcdf4", format="NETCDF4", encoding=encoding)
            found = validate_source_file(part, "olr", year=year)
    _report_missing(found.floor("D"), _expected_days(year, None), f"OLR {year}")
    return dest


# --------------------------------------------------------------------------- ERA5 via the CDS


def era5_request(year: int, month: int, levels: list[float]) -> dict:
    """The CDS request of one month of ERA5 daily-mean temperature at ``levels`` (hPa).

    Daily means over the 24 hourly analyses of each UTC day, at the native 0.25 degree grid,
    as netCDF. A month at 10 levels is 31 x 24 x 10 = 7440 hourly fields, well inside the
    CDS's per-request limit.
    """
    days = calendar.monthrange(year, month)[1]
    return {
        "product_type": "reanalysis",
        "variable": ["temperature"],
        "year": str(year),
        "month": [f"{month:02d}"],
        "day": [f"{day:02d}" for day in range(1, days + 1)],
        "pressure_level": [f"{float(level):g}" for level in sorted(levels)],
        "daily_statistic": "daily_mean",
        "time_zone": "utc+00:00",
        "frequency": "1_hourly",
    }


def cds_credentials() -> tuple[str, str]:
    """``(url, key)`` of the CDS API from CDSAPI_URL/CDSAPI_KEY or ``~/.cdsapirc`` (CDSAPI_RC).

    Raises :class:`CredentialsError` (one line, how to set them up) when they are missing or
    malformed: the key of today's CDS is a personal access token without a colon; a
    ``UID:KEY`` pair belongs to the retired CDS.
    """
    url, key = os.environ.get("CDSAPI_URL"), os.environ.get("CDSAPI_KEY")
    rc = Path(os.environ.get("CDSAPI_RC", Path.home() / ".cdsapirc")).expanduser()
    if (url is None or key is None) and rc.is_file():
        for line in rc.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "url" and url is None:
                url = value.strip()
            elif name.strip() == "key" and key is None:
                key = value.strip()
    if not url or not key:
        raise CredentialsError(f"no CDS credentials found ({rc} or CDSAPI_*): {CREDENTIALS_HELP}")
    if not url.startswith(("https://", "http://")):
        raise CredentialsError(f"CDS url '{url}' is not an http(s) URL: {CREDENTIALS_HELP}")
    if ":" in key:
        raise CredentialsError(
            f"the CDS key in {rc} is a 'UID:KEY' pair of the retired CDS: {CREDENTIALS_HELP}"
        )
    return url, key


class RequestSlots:
    """At most ``n`` holders at once across processes: ``n`` lock files in ``directory``.

    ``with slots:`` takes the first free ``slot-<i>.lock`` (``fcntl.flock``, released when the
    holder exits or dies) and waits ``poll_s`` between tries while all are taken. Processes on
    one machine (the download rules are local rules) share the limit.
    """

    def __init__(self, directory: str | Path, n: int, poll_s: float = 5.0):
        if n < 1:
            raise ValueError(f"need at least one request slot, got {n}")
        self.directory, self.n, self.poll_s = Path(directory), int(n), poll_s
        self._held: int | None = None

    def __enter__(self) -> RequestSlots:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.n):
                fd = os.open(self.directory / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    os.close(fd)
                    if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    continue
                self._held = fd
                return self
            time.sleep(self.poll_s)

    def __exit__(self, *exc) -> None:
        if self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            os.close(self._held)
            self._held = None


def _unzip_if_needed(path: Path) -> None:
    """The CDS may wrap netCDF in a zip; replace ``path`` by its single netCDF member."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.namelist() if m.endswith(".nc")]
        if len(members) != 1:
            raise ValidationError(f"CDS zip holds {len(members)} netCDF files, expected 1")
        unpacked = path.with_name(path.name + ".unzipped")
        with archive.open(members[0]) as member, open(unpacked, "wb") as out:
            while chunk := member.read(_CHUNK_BYTES):
                out.write(chunk)
    os.replace(unpacked, path)


def _cds_failure(error: Exception) -> DownloadError:
    """A CDS exception as a one-line DownloadError; HTTP 401/403 become CredentialsError."""
    text = _one_line(error)
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is None and text[:3] in ("401", "403"):
        status = int(text[:3])
    if status in (401, 403):
        if "licen" in text.lower():
            return CredentialsError(
                f"the CDS refused the request: accept the licence of {ERA5_DATASET} on its "
                f"page, then rerun ({text})"
            )
        return CredentialsError(
            f"the CDS rejected the credentials (HTTP {status}): {CREDENTIALS_HELP}"
        )
    return DownloadError(f"CDS request for {ERA5_DATASET} failed: {text}")


def download_era5_month(
    dest: str | Path,
    year: int,
    month: int,
    levels: list[float],
    slots_dir: str | Path,
    max_in_flight: int = 4,
    poll_s: float = 5.0,
    resolution: float = RESOLUTION["era5"],
) -> Path:
    """One month of ERA5 daily-mean temperature from the CDS to ``dest``, unless it exists.

    Credentials are checked before anything is sent (:func:`cds_credentials`). The request
    (:func:`era5_request`) waits for one of ``max_in_flight`` slots in ``slots_dir``
    (:class:`RequestSlots`); the cdsapi client itself retries transient HTTP failures.
    The result is validated (variable, units, global grid of ``resolution`` degrees, every day
    of the month, the levels) before it takes the name ``dest``.
    """
    dest = Path(dest)
    if dest.exists():
        logger.info("%s exists: not fetched again", dest)
        return dest
    url, key = cds_credentials()
    import cdsapi

    request = era5_request(year, month, levels)
    with _staged(dest) as part:
        with RequestSlots(slots_dir, max_in_flight, poll_s):
            logger.info("CDS request %s %s", ERA5_DATASET, request)
            started = time.monotonic()
            try:
                client = cdsapi.Client(url=url, key=key, quiet=True, progress=True)
                client.retrieve(ERA5_DATASET, request, str(part))
            except Exception as error:
                raise _cds_failure(error) from None
        if not part.exists():
            raise DownloadError(f"the CDS request for {year}-{month:02d} wrote no file")
        _unzip_if_needed(part)
        validate_source_file(
            part,
            "era5",
            year=year,
            month=month,
            levels=levels,
            complete=True,
            resolution=resolution,
        )
        logger.info(
            "%s: %.1f MiB in %.0f s, valid",
            dest,
            part.stat().st_size / 2**20,
            time.monotonic() - started,
        )
    return dest


def _era5_file(nc, source: str, days, levels, lat, lon, quantize: bool = False):
    """Dimensions, coordinates and the empty ``t`` variable of a yearly ERA5 file in the CDS
    layout (``valid_time, pressure_level, latitude, longitude``; ``lat`` as given, i.e.
    descending), zlib-compressed one day and level per chunk; returns ``t``."""
    nc.Conventions = "CF-1.7"
    nc.source = source
    coords = (
        ("pressure_level", np.asarray(levels), {"units": "hPa"}),
        ("latitude", np.asarray(lat), {"units": "degrees_north"}),
        ("longitude", np.asarray(lon), {"units": "degrees_east"}),
    )
    nc.createDimension("valid_time", len(days))
    for name, values, _ in coords:
        nc.createDimension(name, len(values))
    time_var = nc.createVariable("valid_time", "i8", ("valid_time",))
    time_var.units = "seconds since 1970-01-01"
    time_var.calendar = "proleptic_gregorian"
    time_var[:] = np.asarray((days - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s"))
    for name, values, attrs in coords:
        var = nc.createVariable(name, "f8", (name,))
        var.setncatts(attrs)
        var[:] = values
    options = {"quantize_mode": "BitRound", "significant_digits": 16} if quantize else {}
    t = nc.createVariable(
        "t",
        "f4",
        ("valid_time", "pressure_level", "latitude", "longitude"),
        zlib=True,
        complevel=1,
        chunksizes=(1, 1, len(lat), len(lon)),
        **options,
    )
    t.setncatts({"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"})
    return t


def merge_era5_year(
    month_paths: list[str | Path],
    dest: str | Path,
    year: int,
    resolution: float = RESOLUTION["era5"],
) -> Path:
    """Concatenate the monthly ERA5 files of ``year`` into ``dest``, one day at a time.

    The output keeps the CDS layout (``t`` float32 in K, dims ``valid_time, pressure_level,
    latitude, longitude``, latitude descending as delivered), zlib-compressed with one chunk
    per day and level; memory holds one day of one month, whatever the grid.
    """
    import netCDF4

    dest = Path(dest)
    started = time.monotonic()
    months = [open_source(path, "era5") for path in month_paths]
    try:
        months.sort(key=lambda da: da.indexes["time"][0])
        first = months[0]
        for other in months[1:]:
            for dim in ("level", "lat", "lon"):
                if not np.array_equal(first[dim].values, other[dim].values):
                    raise ValidationError(f"ERA5 months of {year} differ in their {dim} grid")
        days = pd.DatetimeIndex(np.concatenate([m.indexes["time"].values for m in months]))
        with _staged(dest) as part:
            with netCDF4.Dataset(part, "w", format="NETCDF4") as nc:
                t = _era5_file(
                    nc,
                    f"ERA5 {ERA5_DATASET} (daily_mean, utc+00:00, 1_hourly)",
                    days,
                    first["level"].values,
                    first["lat"].values[::-1],
                    first["lon"].values,
                    # 16 significant bits keep 300 K to 0.004 K, no coarser than ERA5's own
                    # 16-bit GRIB packing; the zeroed low bits make zlib effective on the
                    # ~15 GB (uncompressed) a year takes at 0.25 degrees.
                    quantize=True,
                )
                index = 0
                for month in months:
                    for day in range(month.sizes["time"]):
                        # open_source sorted latitude ascending: store it descending again.
                        t[index] = month.isel(time=day).values[:, ::-1, :]
                        index += 1
            # Every value came from a validated month: check the layout and the days only.
            validate_source_file(
                part, "era5", year=year, complete=True, resolution=resolution, read_values=False
            )
            size = part.stat().st_size
        logger.info(
            "merged %d monthly files (%s) into %s: %d days %s..%s, %d levels, %d x %d grid, "
            "%.1f MiB, %.0f s",
            len(month_paths),
            ", ".join(Path(p).name for p in month_paths),
            dest,
            len(days),
            days[0].date(),
            days[-1].date(),
            first.sizes["level"],
            first.sizes["lat"],
            first.sizes["lon"],
            size / 2**20,
            time.monotonic() - started,
        )
    finally:
        for month in months:
            month.close()
    return dest


# ------------------------------------------------------------------- ERA5 via WeatherBench 2

WB2_URL = FULL_37_0P25.url  # the schema's default: ERA5's 0.25 degree grid, all 37 levels
WB2_STEPS_PER_DAY = 4  # 00, 06, 12, 18 UTC
# Days read at once: as many as fit in this many bytes of float32 (at least one), so that a
# 0.25 degree store is read a day at a time (166 MB for 10 levels) and a 1.5 degree store a
# month at a time, as its chunks of 8 steps favour.
WB2_BLOCK_BYTES = 256 * 2**20


def open_weatherbench2(url: str = WB2_URL) -> xr.Dataset:
    """A WeatherBench 2 ERA5 store, lazily (consolidated zarr metadata, nothing else read).

    ``url`` is an ``https://`` (anonymous, over fsspec's HTTP file system), ``gs://`` (needs
    gcsfs) or local path. The stores hold ``temperature`` in K, 6-hourly, with dims ``time,
    level, latitude, longitude`` in some order and latitude either way round: the 0.25 degree
    store ERA5's 1440 x 721 grid and 37 levels, the 1.5 degree one 240 x 121 and 13 levels
    (:mod:`slams.data.weatherbench2`).
    """
    try:
        return xr.open_zarr(url, consolidated=True, chunks=None, decode_timedelta=False)
    except Exception as error:
        raise DownloadError(
            f"cannot open the WeatherBench 2 store {url}: {_one_line(error)} (check "
            "download.era5.weatherbench2_url and the connection; needs zarr, fsspec, aiohttp)"
        ) from None


def download_era5_weatherbench2(
    dest: str | Path,
    year: int,
    levels: list[float],
    url: str = WB2_URL,
    resolution: float | None = None,
) -> Path:
    """One year of ERA5 daily-mean temperature at ``levels`` from WeatherBench 2 to ``dest``.

    Opens the store (:func:`open_weatherbench2`) and checks, before reading any data, its
    variable, dims, levels (one line naming the levels it has and the ones missing) and the
    year's steps: every day must have its four (00, 06, 12, 18 UTC), whose mean is the day's
    value (the CDS product averages the 24 hourly analyses instead; the two differ by the
    diurnal sampling, typically < 0.1 K in the free troposphere). Then reads only ``levels``
    and the year's steps, a block of whole days at a time (:data:`WB2_BLOCK_BYTES`), and writes
    the CDS layout :func:`merge_era5_year` writes (``t`` in K, dims ``valid_time,
    pressure_level, latitude, longitude``, latitude descending, whatever the store's order),
    with the same 16 significant bits, under a temporary name first; validated at
    ``resolution`` degrees (default: the store's own latitude spacing). Raises
    :class:`DownloadError` or :class:`ValidationError` with one line.
    """
    import netCDF4

    dest = Path(dest)
    if dest.exists():
        logger.info("%s exists: not fetched again", dest)
        return dest
    started = time.monotonic()
    store = open_weatherbench2(url)
    if "temperature" not in store:
        raise ValidationError(f"{url}: no variable 'temperature' (has {sorted(store.data_vars)})")
    t = store["temperature"]
    expected_dims = {"time", "level", "latitude", "longitude"}
    if set(t.dims) != expected_dims:
        raise ValidationError(f"{url}: temperature has dims {t.dims}, expected {expected_dims}")
    available = [float(v) for v in t["level"].values]
    problem = missing_levels(url, available, levels)
    if problem:
        raise ValidationError(problem[0].upper() + problem[1:])
    times = t.indexes["time"]
    in_year = np.flatnonzero(times.year == year)
    days = _expected_days(year, None)
    if in_year.size == 0:
        raise ValidationError(
            f"{url} holds no step of {year} (it covers {times[0].date()}..{times[-1].date()}): "
            "choose data.years inside that range"
        )
    steps = times[in_year[0] : in_year[-1] + 1]
    per_day = pd.Series(1, index=steps.floor("D")).groupby(level=0).size()
    short = per_day[per_day != WB2_STEPS_PER_DAY]
    missing = days.difference(per_day.index)
    if len(missing) or len(short):
        raise ValidationError(
            f"{url}: {year} is incomplete: {len(missing)} days without steps"
            f"{' (' + describe_dates(missing) + ')' if len(missing) else ''}, {len(short)} days "
            f"without {WB2_STEPS_PER_DAY} 6-hourly steps"
        )
    level_index = sorted(
        (int(np.flatnonzero(np.isclose(available, float(v)))[0]) for v in levels),
        key=lambda i: available[i],
    )
    lat = t["latitude"].values.astype(np.float64)
    lon = t["longitude"].values.astype(np.float64)
    if lat.size < 2 or lon.size < 2:
        raise ValidationError(f"{url}: a {lat.size} x {lon.size} grid is not global")
    if resolution is None:
        resolution = float(np.abs(np.diff(lat)).mean())
    lat_order = np.argsort(lat)[::-1]  # the CDS layout: latitude descending
    day_bytes = WB2_STEPS_PER_DAY * len(level_index) * lat.size * lon.size * 4
    block_days = max(1, WB2_BLOCK_BYTES // day_bytes)
    with _staged(dest) as part:
        with netCDF4.Dataset(part, "w", format="NETCDF4") as nc:
            out = _era5_file(
                nc,
                f"ERA5 from WeatherBench 2 ({url}), daily mean of 4 six-hourly steps",
                days,
                [available[i] for i in level_index],
                lat[lat_order],
                lon,
                # as merge_era5_year: 16 significant bits, finer than ERA5's own packing
                quantize=True,
            )
            index = 0
            for month in range(1, 13):
                wanted = in_year[0] + np.flatnonzero(steps.month == month)
                month_days = len(wanted) // WB2_STEPS_PER_DAY
                for first in range(0, month_days, block_days):
                    block_steps = wanted[
                        first * WB2_STEPS_PER_DAY : (first + block_days) * WB2_STEPS_PER_DAY
                    ]
                    block = t.isel(time=block_steps, level=level_index).transpose(
                        "time", "level", "latitude", "longitude"
                    )
                    try:
                        values = np.asarray(block.values, dtype=np.float32)
                    except Exception as error:
                        raise DownloadError(
                            f"reading {year}-{month:02d} from {url} failed: {_one_line(error)}"
                        ) from None
                    daily = values.reshape(-1, WB2_STEPS_PER_DAY, *values.shape[1:]).mean(
                        axis=1, dtype=np.float64
                    )
                    out[index : index + len(daily)] = daily[:, :, lat_order, :].astype(np.float32)
                    index += len(daily)
                logger.info("%s-%02d: %d days read", year, month, month_days)
        validate_source_file(
            part, "era5", year=year, levels=levels, complete=True, resolution=resolution
        )
        size = part.stat().st_size
    logger.info(
        "%s: %d days, %d levels, %d x %d grid from WeatherBench 2, %.1f MiB, %.0f s",
        dest,
        len(days),
        len(level_index),
        lat.size,
        lon.size,
        size / 2**20,
        time.monotonic() - started,
    )
    return dest
