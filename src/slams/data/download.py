"""Downloads of the real sources: ERA5 from the Copernicus CDS, CPC and OLR from NOAA PSL.

Every file is written under a temporary name beside its destination (``.<name>.part``),
validated, and only then renamed to its final name with ``os.replace`` (atomic on one file
system). An interrupted, truncated or otherwise broken download therefore leaves no file under
the final name: a rerun finds nothing it could mistake for a finished download, deletes any
stale ``.part`` file and starts again. A file that exists under its final name is finished and
is never fetched again.

Validation (:func:`validate_source_file`) opens the file with :func:`slams.data.regrid.open_source`
(the variable, its units and dims, daily time steps), checks the grid spacing, the global
coverage, the dates (year, month) and the pressure levels, and reads every value once, so that a
file whose header is intact but whose data were cut off is rejected too.

- ERA5 (:func:`download_era5_month`): one CDS request per month of the daily-mean product
  ``derived-era5-pressure-levels-daily-statistics`` (:func:`era5_request`), at most
  ``max_in_flight`` requests at once over all processes that share ``slots_dir``
  (:class:`RequestSlots`); :func:`merge_era5_year` streams the twelve months into one file.
- CPC and OLR (:func:`fetch_http`): HTTP GET with connect/read timeouts, retries with
  exponential backoff on connection errors, timeouts, HTTP 429/5xx, truncated bodies and
  invalid files; a 4xx answer (e.g. 404) fails at once. NOAA serves all OLR years in one file:
  :func:`extract_olr_year` cuts one year out of it, keeping its packed 16-bit encoding.
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

from slams.data.dataset import describe_dates
from slams.data.regrid import open_source

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
        da = open_source(path, source)
    except Exception as error:  # not netCDF, truncated HDF5, wrong variable or units
        raise ValidationError(f"{name} is not a valid {source} file: {_one_line(error)}") from None
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
        for start in range(0, da.sizes["time"], step):
            try:
                block = da.isel(time=slice(start, start + step)).values
            except Exception as error:  # data cut off behind an intact header
                raise ValidationError(
                    f"{name}: data unreadable from day {start}: {_one_line(error)}"
                ) from None
            finite = np.isfinite(block)
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


def _get(session, url: str, part: Path, options: HttpOptions) -> None:
    """One GET of ``url`` into ``part``; raises _Transient, DownloadError (final) or OSError."""
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
    ``options.retries`` more times. HTTP 4xx other than 429 fails at once. Raises
    :class:`DownloadError` with one line naming the URL and the last failure; no file is left
    under ``dest`` or its temporary name after a failure.
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
                _get(session, url, part, options)
                validate(part)
                size = part.stat().st_size
            logger.info(
                "%s: %.1f MiB in %.0f s, valid", dest, size / 2**20, time.monotonic() - started
            )
            return dest
        except (_Transient, ValidationError) as error:
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
                nc.Conventions = "CF-1.7"
                nc.source = f"ERA5 {ERA5_DATASET} (daily_mean, utc+00:00, 1_hourly)"
                nc.createDimension("valid_time", len(days))
                for dim, name in (
                    ("level", "pressure_level"),
                    ("lat", "latitude"),
                    ("lon", "longitude"),
                ):
                    nc.createDimension(name, first.sizes[dim])
                time_var = nc.createVariable("valid_time", "i8", ("valid_time",))
                time_var.units = "seconds since 1970-01-01"
                time_var.calendar = "proleptic_gregorian"
                time_var[:] = np.asarray((days - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s"))
                coords = (
                    ("pressure_level", first["level"].values, {"units": "hPa"}),
                    ("latitude", first["lat"].values[::-1], {"units": "degrees_north"}),
                    ("longitude", first["lon"].values, {"units": "degrees_east"}),
                )
                for name, values, attrs in coords:
                    var = nc.createVariable(name, "f8", (name,))
                    var.setncatts(attrs)
                    var[:] = values
                shape = (first.sizes["lat"], first.sizes["lon"])
                t = nc.createVariable(
                    "t",
                    "f4",
                    ("valid_time", "pressure_level", "latitude", "longitude"),
                    zlib=True,
                    complevel=1,
                    chunksizes=(1, 1, *shape),
                    # 16 significant bits keep 300 K to 0.004 K, no coarser than ERA5's own
                    # 16-bit GRIB packing; the zeroed low bits make zlib effective on the
                    # ~15 GB (uncompressed) a year takes at 0.25 degrees.
                    quantize_mode="BitRound",
                    significant_digits=16,
                )
                t.setncatts(
                    {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"}
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
    finally:
        for month in months:
            month.close()
    return dest
