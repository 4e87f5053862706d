"""Reference analyses that use no machine learning."""

from __future__ import annotations

import xarray as xr


def climatology_analysis(climatology: xr.Dataset, times: xr.DataArray) -> xr.DataArray:
    """The day-of-year mean temperature (K) of each requested day: the no-information reference.

    ``climatology`` holds ``t`` with dims ``(dayofyear, level, lat, lon)`` (1..366) from the
    training years; returns ``(time, level, lat, lon)``.
    """
    doy = times.dt.dayofyear
    return climatology["t"].sel(dayofyear=doy).drop_vars("dayofyear")
