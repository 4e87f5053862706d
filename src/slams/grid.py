"""Regular latitude-longitude grids: target cell centres, cell edges and area weights.

The workflow's target grid is cell-centred (no pole rows): for a resolution ``r`` degrees,
``lat = -90 + r/2, ..., 90 - r/2`` (ascending) and ``lon = r/2, ..., 360 - r/2``.
Source grids (ERA5, OLR) may be node grids that include the poles; their edges are clipped to
[-90, 90] so that the pole rows become half cells.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def target_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres of the regular target grid of ``resolution`` degrees.

    Returns ``(lat, lon)`` with shapes ``(180/r,)`` and ``(360/r,)``:
    ``lat_i = -90 + r (i + 1/2)`` and ``lon_j = r (j + 1/2)``, both ascending.
    E.g. 5.625 -> 32 x 64, 1.5 -> 120 x 240.
    """
    n_lat = 180.0 / resolution
    if resolution <= 0 or abs(n_lat - round(n_lat)) > 1e-9:
        raise ValueError(f"resolution {resolution} does not divide 180 degrees into whole cells")
    n_lat = round(n_lat)
    lat = -90.0 + resolution * (np.arange(n_lat) + 0.5)
    lon = resolution * (np.arange(2 * n_lat) + 0.5)
    return lat, lon


def cell_edges(centres: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Edges ``(n+1,)`` of the cells around 1-D ``centres`` (ascending or descending).

    Inner edges are midpoints ``(c_i + c_{i+1}) / 2``; the outer edges are extrapolated by
    half a neighbouring step, ``c_0 - (c_1 - c_0)/2``, and then clipped to ``[lo, hi]`` when
    given. For a node grid ``90, 90-r, ..., -90`` clipped to [-90, 90] this gives pole half cells.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 1 or centres.size < 2:
        raise ValueError("cell_edges needs a 1-D array of at least two centres")
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - 0.5 * (centres[1] - centres[0])
    last = centres[-1] + 0.5 * (centres[-1] - centres[-2])
    edges = np.concatenate([[first], mid, [last]])
    if lo is not None or hi is not None:
        edges = np.clip(edges, lo, hi)
    return edges


def area_weights(lat: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Relative cell areas of the latitude rows ``lat``, normalised to mean 1.

    ``w_i ∝ |sin(phi_{i+1/2}) - sin(phi_{i-1/2})|`` with edges from :func:`cell_edges`
    clipped to [-90, 90] (WeatherBench 2 convention). For a cell-centred regular grid this is
    ``∝ cos(phi_i)``; pole rows of a node grid get the area of their half cell.
    Returns a DataArray with dims ``("lat",)`` and the given latitudes as coordinate.
    """
    lat_values = np.asarray(lat, dtype=np.float64)
    edges = np.deg2rad(cell_edges(lat_values, -90.0, 90.0))
    weights = np.abs(np.diff(np.sin(edges)))
    weights = weights / weights.mean()
    return xr.DataArray(weights, dims=("lat",), coords={"lat": lat_values}, name="area_weight")
