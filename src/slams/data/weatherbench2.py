"""WeatherBench 2's public ERA5 stores: what each one holds, known without opening it.

The workflow reads one store (``download.era5.weatherbench2_url``) with
:func:`slams.data.download.download_era5_weatherbench2`. The stores it knows by name are
listed in :data:`STORES`, so that a config asking one of them for a level it lacks fails at
validation, before any job runs (:func:`check_levels`); a store of any other name is checked
when its job opens it, against the levels it has. Nothing here reads data or imports xarray.

What each entry says, and where it comes from (none of it from a read of the store, which is
not reachable from the development machines):

- ``1959-2022-full_37-6h-0p25deg-chunk-1.zarr-v2``: ERA5 at its native 0.25 degrees
  (1440 x 721 with both poles), 6-hourly, ERA5's 37 pressure levels 1..1000 hPa. The 37 levels
  and the grid: public code that reads it, e.g. a table of WeatherBench 2's configurations
  ``(6 h, 37 levels, 1440 x 721, poles)`` and a probe that lists its chunks as one time step,
  all 37 levels and the whole globe, ``(1, 37, 721, 1440)``, i.e. dims ``time, level,
  latitude, longitude``. Latitude descending (90..-90) like every 0.25 degree ERA5 store of
  Google's (WeatherBench 2's data guide shows 90.0 first for its 1440 x 721 store); believed,
  not confirmed for this store by name. The reader sorts latitude itself either way.
- ``1959-2022-6h-240x121_equiangular_with_poles_conservative.zarr`` (and its successor
  ``1959-2023_01_10-…``): conservatively regridded to 1.5 degrees (240 x 121 with both poles),
  "downsampled to 6h and 13 levels" (WeatherBench 2's data guide): 50..1000 hPa, no 10 hPa.
  Dims ``time, level, longitude, latitude``, latitude ascending -90..90 (WeatherBench 2's
  regridding writes ``np.linspace(-90, 90, n)`` and transposes longitude before latitude).
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKET = "https://storage.googleapis.com/weatherbench2/datasets/era5/"

# ERA5's 37 pressure levels (hPa), and the 13 WeatherBench 2 keeps in its downsampled stores.
ERA5_LEVELS = (1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300, 350,
               400, 450, 500, 550, 600, 650, 700, 750, 775, 800, 825, 850, 875, 900, 925, 950,
               975, 1000)  # fmt: skip
WB13_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


@dataclass(frozen=True)
class Store:
    """One WeatherBench 2 ERA5 store: its name in the bucket and its pressure levels (hPa)."""

    name: str
    levels: tuple[int, ...]

    @property
    def url(self) -> str:
        return BUCKET + self.name


FULL_37_0P25 = Store("1959-2022-full_37-6h-0p25deg-chunk-1.zarr-v2", ERA5_LEVELS)
WB13_1P5 = Store("1959-2022-6h-240x121_equiangular_with_poles_conservative.zarr", WB13_LEVELS)
WB13_1P5_2023 = Store(
    "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr", WB13_LEVELS
)
STORES = {store.name: store for store in (FULL_37_0P25, WB13_1P5, WB13_1P5_2023)}


def store_name(url: str) -> str:
    """The store's own name, the last part of its URL or path (``gs://``, ``https://``, local)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def known_store(url: str) -> Store | None:
    """The entry of :data:`STORES` that ``url`` names, or None for a store we do not know."""
    return STORES.get(store_name(url))


def _hpa(levels) -> str:
    return ", ".join(f"{float(level):g}" for level in levels) + " hPa"


def missing_levels(url: str, available, wanted) -> str | None:
    """None if the store at ``url`` holds every level of ``wanted``; otherwise one line that
    names the levels it has, the ones missing, and the two ways out."""
    have = {float(level) for level in available}
    missing = sorted({float(level) for level in wanted} - have)
    if not missing:
        return None
    return (
        f"the WeatherBench 2 store {store_name(url)} has the pressure levels "
        f"{_hpa(sorted(have))} but not {_hpa(missing)}: drop {_hpa(missing)} from data.levels "
        "(presets/weatherbench2-1p5.yaml does, for the 1.5 degree store) or set "
        f"download.era5.weatherbench2_url to the 0.25 degree store with all 37 levels, "
        f"{FULL_37_0P25.url}"
    )


def check_levels(url: str, levels) -> str | None:
    """:func:`missing_levels` for a store known by name; None for any other store (its levels
    are checked when its job opens it, not guessed here)."""
    store = known_store(url)
    return None if store is None else missing_levels(url, store.levels, levels)
