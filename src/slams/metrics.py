"""Verification metrics for analyses, following WeatherBench 2 conventions.

Every function takes labelled xarray objects and an explicit ``dims``: the dimensions
that are reduced. Dimensions not in ``dims`` (typically ``level``) are kept, so one
call scores all levels at once. The ensemble dimension is always called ``member``;
it is never part of ``dims`` (it is pooled or averaged as each metric requires).

Conventions (WeatherBench 2):

- area weights ``w(lat)`` come from :func:`slams.grid.area_weights`, proportional to
  ``sin(lat_north_edge) - sin(lat_south_edge)`` and normalised to mean 1;
- a "spatial mean" is the area-weighted mean over the ``lat``/``lon`` dims in ``dims``, and the
  remaining dims in ``dims`` (typically ``time``) are then averaged with equal weight;
- NaNs are never skipped: a NaN anywhere in what a score reduces makes that score NaN (a
  diverged member must not leave a finite score from fewer members or points), and
  :func:`score_analysis` refuses an analysis or truth with any non-finite value;
- errors are ``analysis - truth`` (a warm analysis has a positive bias);
- temperature scores are in kelvin.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from slams.grid import area_weights

MEMBER = "member"
SPATIAL_DIMS = ("lat", "lon")
DEFAULT_DIMS = ("time", "lat", "lon")

__all__ = [
    "bias",
    "crps",
    "rank_histogram",
    "rank_histogram_analysis",
    "rmse",
    "score_analysis",
    "spread",
    "spread_skill",
    "wasserstein",
]


# --------------------------------------------------------------------------- helpers


def _check_dims(truth: xr.DataArray, dims: Sequence[Hashable]) -> tuple[Hashable, ...]:
    """Return ``dims`` as a tuple without ``member``, after checking they exist in truth."""
    dims = tuple(d for d in dims if d != MEMBER)
    missing = [d for d in dims if d not in truth.dims]
    if missing:
        raise ValueError(f"dims {missing} are not dimensions of the data {truth.dims}")
    return dims


def _align(truth: xr.DataArray, analysis: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Check that analysis = truth's dims (+ member) on identical coordinates."""
    extra = set(analysis.dims) - set(truth.dims) - {MEMBER}
    if extra:
        raise ValueError(
            f"analysis has dims {sorted(map(str, extra))} that truth lacks; "
            "only 'member' may be extra"
        )
    # join="exact": scoring an analysis against truth on other dates/grid is a bug.
    return xr.align(truth, analysis, join="exact")


def _weights_for(da: xr.DataArray) -> xr.DataArray:
    """Area weights of ``da``'s latitudes, as a DataArray on exactly da's ``lat`` coordinate."""
    values = np.asarray(area_weights(np.asarray(da["lat"].values)), dtype=np.float64)
    # Rewrapped on da's own coordinate so alignment never fails on float round-off.
    return xr.DataArray(values, dims=("lat",), coords={"lat": da["lat"].values})


def _mean_over(field: xr.DataArray, dims: tuple[Hashable, ...]) -> xr.DataArray:
    """Area-weighted mean over the spatial dims in ``dims``, then a plain mean over the rest.

    mean_rest( sum_ij w_i f_ij / sum_ij w_i )  with w_i the area weight of latitude row i;
    a NaN makes the mean NaN.
    """
    spatial = [d for d in dims if d in SPATIAL_DIMS]
    rest = [d for d in dims if d not in SPATIAL_DIMS]
    if "lat" in spatial:
        field = field.weighted(_weights_for(field)).mean(spatial, skipna=False)
    elif spatial:
        field = field.mean(spatial, skipna=False)
    if rest:
        field = field.mean(rest, skipna=False)
    return field


def _ensemble_mean(analysis: xr.DataArray) -> xr.DataArray:
    return analysis.mean(MEMBER, skipna=False) if MEMBER in analysis.dims else analysis


def _n_members(analysis: xr.DataArray) -> int:
    return analysis.sizes[MEMBER] if MEMBER in analysis.dims else 1


def _require_members(analysis: xr.DataArray, metric: str) -> int:
    n_members = _n_members(analysis)
    if n_members < 2:
        raise ValueError(
            f"{metric} needs an ensemble with at least 2 members along 'member', got {n_members}"
        )
    return n_members


# --------------------------------------------------------------------------- Wasserstein


def _sorted_masses(
    values: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | float]:
    """Values sorted ascending and their probability masses (weights / sum, or 1/n)."""
    if weights is None:
        return np.sort(values), 1.0 / values.size
    order = np.argsort(values)
    masses = weights[order].astype(np.float64)
    return values[order], masses / masses.sum()


def _wasserstein_1d(
    u: np.ndarray,
    v: np.ndarray,
    u_weights: np.ndarray | None = None,
    v_weights: np.ndarray | None = None,
) -> float:
    """Exact W1 between two weighted empirical distributions (NaN if either holds a NaN).

    W1(u, v) = integral |F_u(x) - F_v(x)| dx, evaluated exactly as a sum over the
    intervals between consecutive pooled sample values z_(k), on which both CDFs are
    constant:  W1 = sum_k |F_u(z_(k)) - F_v(z_(k))| (z_(k+1) - z_(k)).
    F_u - F_v at z_(k) is the running sum of signed masses (+mass for u, -mass for v)
    over the pooled values up to k; where values tie, the interval has zero width, so the
    running sum is only ever used where it already includes all tied values.
    Same result as ``scipy.stats.wasserstein_distance(u, v, u_weights, v_weights)``.
    """
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        return float("nan")  # never a distance between fewer values than were given
    if u_weights is not None:
        u, u_weights = u[u_weights > 0], u_weights[u_weights > 0]
    if v_weights is not None:
        v, v_weights = v[v_weights > 0], v_weights[v_weights > 0]
    if u.size == 0 or v.size == 0:
        return float("nan")
    u_sorted, u_mass = _sorted_masses(u, u_weights)
    v_sorted, v_mass = _sorted_masses(v, v_weights)
    concatenated = np.concatenate([u_sorted, v_sorted])
    # A stable sort of two sorted runs is a linear-time merge (timsort): cheap.
    merge = np.argsort(concatenated, kind="stable")
    pooled = concatenated[merge]
    del concatenated
    signed_mass = np.concatenate(
        [np.broadcast_to(u_mass, u_sorted.shape), -np.broadcast_to(v_mass, v_sorted.shape)]
    )[merge]
    del merge
    cdf_gap = np.abs(np.cumsum(signed_mass, out=signed_mass)[:-1])
    # Widths in float64 even for float32 data: many small intervals are summed.
    widths = np.diff(pooled.astype(np.float64))
    return float(np.dot(cdf_gap, widths))


def wasserstein(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
    weighted: bool = False,
) -> xr.DataArray:
    """1-D Wasserstein-1 distance between the pooled values of truth and analysis.

    W1 = integral |F_truth(x) - F_analysis(x)| dx
       = integral_0^1 |F_truth^-1(q) - F_analysis^-1(q)| dq,

    where F are the empirical CDFs of all values over ``dims`` (the analysis' ``member``
    dim is pooled too: all members together form one sample). This is the paper's
    distribution-level score (Fig. 7); it ignores *where* values occur. Exact (no
    binning), identical to ``scipy.stats.wasserstein_distance``; NaN where a sample has a NaN.

    Args:
        truth: e.g. (time, level, lat, lon).
        analysis: truth's dims, optionally plus ``member``.
        dims: dims pooled into each sample; the others (e.g. ``level``) are kept.
        weighted: if True, each value is a sample of weight w(lat) (area weights), so the
            CDFs are area-weighted; requires ``lat`` in ``dims``.

    Returns:
        W1 in the units of the data, with the dims of truth not in ``dims`` (e.g. (level,)).
    """
    dims = _check_dims(truth, dims)
    if weighted and "lat" not in dims:
        raise ValueError("weighted=True needs 'lat' in dims (area weights are per latitude)")
    truth, analysis = _align(truth, analysis)
    kept = [d for d in truth.dims if d not in dims]
    member = [MEMBER] if MEMBER in analysis.dims else []
    truth_values = truth.transpose(*kept, *dims).values
    analysis_values = analysis.transpose(*kept, *member, *dims).values
    kept_shape = tuple(truth.sizes[d] for d in kept)

    truth_weights = analysis_weights = None
    if weighted:
        # Weights broadcast over one sample's core shape only (not the kept dims) to save memory.
        lat_weights = np.asarray(_weights_for(truth).values)
        core = tuple(truth.sizes[d] for d in dims)
        shape = [1] * len(dims)
        shape[dims.index("lat")] = truth.sizes["lat"]
        truth_weights = np.broadcast_to(lat_weights.reshape(shape), core).ravel()
        analysis_weights = np.tile(truth_weights, _n_members(analysis))

    # One exact W1 per kept index (e.g. per level): sorting is the cost, loops are short.
    result = np.empty(kept_shape, dtype=np.float64)
    for index in np.ndindex(*kept_shape):
        result[index] = _wasserstein_1d(
            truth_values[index].ravel(),
            analysis_values[index].ravel(),
            truth_weights,
            analysis_weights,
        )
    coords = {d: truth[d] for d in kept if d in truth.coords}
    return xr.DataArray(result, dims=kept, coords=coords, name="wasserstein")


# --------------------------------------------------------------------------- deterministic


def rmse(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
) -> xr.DataArray:
    """Area-weighted RMSE of the ensemble mean.

    RMSE = sqrt( mean_t  sum_ij w_i (xbar_tij - y_tij)^2 / sum_ij w_i ),
    xbar = mean over ``member`` (if present). The time mean is taken of the spatial MSE
    before the square root (WeatherBench 2).

    Args:
        truth: e.g. (time, level, lat, lon).  analysis: same, optionally plus ``member``.
        dims: reduced dims; spatial ones (lat, lon) are area weighted.

    Returns:
        RMSE (data units) with the remaining dims (e.g. (level,)).
    """
    dims = _check_dims(truth, dims)
    truth, analysis = _align(truth, analysis)
    squared_error = (_ensemble_mean(analysis) - truth) ** 2
    return np.sqrt(_mean_over(squared_error, dims)).rename("rmse")


def bias(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
) -> xr.DataArray:
    """Area-weighted mean error of the ensemble mean: mean_t sum_ij w_i (xbar - y) / sum_ij w_i.

    Positive when the analysis is too warm. Shapes as in :func:`rmse`.
    """
    dims = _check_dims(truth, dims)
    truth, analysis = _align(truth, analysis)
    return _mean_over(_ensemble_mean(analysis) - truth, dims).rename("bias")


# --------------------------------------------------------------------------- probabilistic


def crps(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
) -> xr.DataArray:
    """Fair (unbiased) ensemble CRPS (Ferro 2014), area weighted.

    Per point, with members X_1..X_M and truth y:
        CRPS_fair = 1/M sum_i |X_i - y| - 1/(2 M (M-1)) sum_{i,j} |X_i - X_j|,
    an unbiased estimate of the CRPS of the distribution the members are drawn from
    (so it does not favour small ensembles). A single member (M = 1, e.g. the climatology)
    is a point forecast, whose CRPS is its absolute error |X_1 - y|: the pair term is 0.
    The pair sum is computed in O(M log M) from
    the sorted members d_(1) <= ... <= d_(M):  sum_{i,j} |X_i - X_j| = 2 sum_k (2k - M - 1) d_(k).
    Then averaged with :func:`_mean_over` (area weighted in space, plain mean in time).

    Args:
        truth: e.g. (time, level, lat, lon).  analysis: truth's dims, optionally plus
            ``member`` (absent: one member).

    Returns:
        CRPS (data units) with the remaining dims.
    """
    dims = _check_dims(truth, dims)
    truth, analysis = _align(truth, analysis)
    if MEMBER not in analysis.dims:
        analysis = analysis.expand_dims(MEMBER)
    n_members = analysis.sizes[MEMBER]
    if n_members == 1:
        return _mean_over(abs(analysis.squeeze(MEMBER, drop=True) - truth), dims).rename("crps")
    # Work with X_i - y: the pair term is shift invariant, and subtracting y first avoids
    # cancelling large numbers (temperatures ~250 K) in float32.
    departure = analysis - truth
    skill = abs(departure).mean(MEMBER, skipna=False)
    ordered = xr.apply_ufunc(
        np.sort,
        departure,
        input_core_dims=[[MEMBER]],
        output_core_dims=[[MEMBER]],
        kwargs={"axis": -1},
    )
    rank = np.arange(1, n_members + 1)
    coefficients = xr.DataArray(2 * rank - n_members - 1, dims=(MEMBER,))
    # 1/(2M(M-1)) * 2 sum_k (2k-M-1) d_(k)
    pair_term = (ordered * coefficients).sum(MEMBER, skipna=False) / (n_members * (n_members - 1))
    return _mean_over(skill - pair_term, dims).rename("crps")


def spread(
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
    corrected: bool = True,
) -> xr.DataArray:
    """Ensemble spread: the root of the mean unbiased member variance.

    spread = c * sqrt(mean(s^2)),  s^2 = sum_i (X_i - xbar)^2 / (M - 1) per point,
    c = sqrt((M+1)/M) if ``corrected`` (Fortin et al. 2014: the expected RMSE of the
    ensemble mean of a calibrated M-member ensemble is c times its spread), else 1; the
    mean is the area-weighted spatial / plain time mean of :func:`rmse`. With ``dims``
    that exclude lat/lon (e.g. ``("time",)``) it is a map to set beside the RMSE map
    ``rmse(truth, analysis, dims=("time",))``.

    Args:
        analysis: (member, ...) with M >= 2.  dims: reduced dims (``member`` excluded).

    Returns:
        spread (data units) with the dims not in ``dims`` and not ``member``.
    """
    dims = _check_dims(analysis, dims)
    n_members = _require_members(analysis, "spread")
    correction = np.sqrt((n_members + 1) / n_members) if corrected else 1.0
    variance = analysis.var(MEMBER, ddof=1, skipna=False)
    return (correction * np.sqrt(_mean_over(variance, dims))).rename("spread")


def spread_skill(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
) -> xr.DataArray:
    """Spread/skill ratio with the finite-ensemble correction (Fortin et al. 2014).

    ratio = sqrt((M+1)/M) * sqrt(mean(s^2)) / RMSE(xbar),
    s^2 = unbiased (ddof=1) member variance per point, mean = the same area-weighted
    spatial / plain time mean as the RMSE. A calibrated ensemble (truth statistically
    indistinguishable from a member) has ratio 1; < 1 is under-dispersive.

    Returns:
        dimensionless ratio with the remaining dims.
    """
    dims = _check_dims(truth, dims)
    _require_members(analysis, "spread_skill")
    truth, analysis = _align(truth, analysis)
    skill = rmse(truth, analysis, dims)
    return (spread(analysis, dims, corrected=True) / skill).rename("spread_skill")


def rank_histogram(
    truth: xr.DataArray,
    analysis: xr.DataArray,
    dims: Sequence[Hashable] = DEFAULT_DIMS,
    seed: int = 0,
) -> xr.DataArray:
    """Rank (Talagrand) histogram: how often the truth falls at each rank among the members.

    rank = #{i : X_i < y} + U,  U ~ uniform{0, ..., #{i : X_i = y}}  (random tie breaking,
    reproducible by ``seed``), so rank in {0, ..., M}. Counts are over all points in
    ``dims`` (unweighted counts); a NaN truth or member is an error (it has no rank).
    Flat for a calibrated ensemble, U-shaped when under-dispersive, dome-shaped when
    over-dispersive.

    Args:
        truth: e.g. (time, level, lat, lon).  analysis: truth's dims plus ``member`` (M >= 1).

    Returns:
        int64 counts with the remaining dims plus a last dim ``rank`` = 0..M (M+1 bins).
    """
    dims = _check_dims(truth, dims)
    if MEMBER not in analysis.dims:
        raise ValueError("rank_histogram needs an ensemble: analysis has no 'member' dim")
    n_members = analysis.sizes[MEMBER]
    truth, analysis = _align(truth, analysis)
    departure = analysis - truth
    missing = int(departure.isnull().any(MEMBER).sum())
    if missing:
        raise ValueError(f"rank_histogram: {missing} points with a NaN have no rank")
    below = (departure < 0).sum(MEMBER)
    ties = (departure == 0).sum(MEMBER)
    rng = np.random.default_rng(seed)
    rank = below + rng.integers(0, ties.values + 1)  # high is exclusive
    counts = [(rank == k).sum(dims) for k in range(n_members + 1)]
    histogram = xr.concat(counts, dim="rank").assign_coords(rank=np.arange(n_members + 1))
    return histogram.astype(np.int64).transpose(..., "rank").rename("count")


# --------------------------------------------------------------------------- analysis files


def _select_days(ds: xr.Dataset, observed_only: bool) -> xr.Dataset:
    if not observed_only:
        return ds
    if "observed" not in ds:
        raise ValueError("observed_only=True needs an 'observed' (time,) variable in the dataset")
    observed = ds["observed"].astype(bool)
    if not bool(observed.any()):
        raise ValueError("the analysis has no observed day ('observed' is all 0); score all days")
    return ds.isel(time=np.flatnonzero(observed.values))


def _label(values: xr.DataArray, dim: str, index: int) -> str:
    """A readable coordinate value (a date for times), or the index without a coordinate."""
    if dim not in values.coords:
        return str(index)
    value = values[dim].values[index]
    if np.issubdtype(np.asarray(value).dtype, np.datetime64):
        return np.datetime_as_string(value, unit="D")
    return str(value)


def require_finite(ds: xr.Dataset) -> None:
    """Raise a one-line ValueError if ``analysis`` or ``truth`` holds a NaN or an infinity,
    naming the first member and day: no score may come from fewer members or points."""
    for name in ("analysis", "truth"):
        values = ds[name]
        bad = ~np.isfinite(values.values)
        if bad.any():
            first = dict(zip(values.dims, np.argwhere(bad)[0], strict=True))
            where = ", ".join(
                f"{d} {_label(values, d, i)}" for d, i in first.items() if d in (MEMBER, "time")
            )
            method = ds.attrs.get("method", "?")
            raise ValueError(
                f"{method} {ds.attrs.get('axis', '?')}-{ds.attrs.get('value', '?')}: {name} has "
                f"{int(bad.sum())} non-finite values (first at {where}); not scoring it"
            )


def score_analysis(ds: xr.Dataset, observed_only: bool) -> pd.DataFrame:
    """Score one analysis file per level.

    Args:
        ds: ``analysis`` (member, time, level, lat, lon) K, ``truth`` (time, level, lat, lon) K,
            ``observed`` (time,) 1/0 (bool or int8).
        observed_only: score only the days with ``observed == 1``.

    Returns:
        tidy DataFrame with columns ``level, metric, score``; metrics ``wasserstein`` (K),
        ``wasserstein_normalised`` (1), ``rmse`` (K), ``bias`` (K), ``crps`` (K; of a single
        member its mean absolute error), and with M >= 2 members ``spread_skill`` (1). All
        reduce over (time, lat, lon).

    ``wasserstein_normalised`` = W1 / std(truth), the standard deviation (ddof=0, unweighted)
    of the truth values of that level over the same days and grid points. This is our
    reading of the paper's "normalised" Wasserstein units (the paper does not define
    them): it makes levels with very different variability comparable. The Wasserstein
    distance is the paper's pooled, unweighted one.
    """
    ds = _select_days(ds, observed_only)
    truth, analysis = ds["truth"], ds["analysis"]
    require_finite(ds)
    dims = DEFAULT_DIMS
    scores = {
        "wasserstein": wasserstein(truth, analysis, dims),
        "rmse": rmse(truth, analysis, dims),
        "bias": bias(truth, analysis, dims),
        "crps": crps(truth, analysis, dims),
    }
    scores["wasserstein_normalised"] = scores["wasserstein"] / truth.std(dims, skipna=False)
    if _n_members(analysis) >= 2:
        scores["spread_skill"] = spread_skill(truth, analysis, dims)

    order = ["wasserstein", "wasserstein_normalised", "rmse", "bias", "crps", "spread_skill"]
    levels = truth["level"].values
    rows = []
    for metric in order:
        if metric not in scores:
            continue
        values = scores[metric].transpose("level").values
        rows.extend(
            {"level": level, "metric": metric, "score": float(value)}
            for level, value in zip(levels, values, strict=True)
        )
    return pd.DataFrame(rows, columns=["level", "metric", "score"])


def daily_scores(ds: xr.Dataset) -> pd.DataFrame:
    """Per level and day, the area-weighted MSE of the ensemble mean and the CRPS: what the
    bootstrap of :mod:`slams.significance` resamples (their means over days are the squared
    RMSE and the CRPS of :func:`score_analysis`).

    Returns:
        tidy DataFrame with columns ``level, time, observed, metric, score`` (``mse`` in K²,
        ``crps`` in K) for every day of the file.
    """
    require_finite(ds)
    truth, analysis = ds["truth"], ds["analysis"]
    spatial = ("lat", "lon")
    fields = {
        "mse": rmse(truth, analysis, spatial) ** 2,
        "crps": crps(truth, analysis, spatial),
    }
    observed = ds["observed"].values.astype(bool)
    rows = []
    for metric, field in fields.items():
        table = field.transpose("time", "level").to_pandas()
        long = table.stack().rename("score").reset_index()
        long["observed"] = np.repeat(observed, table.shape[1])
        long["metric"] = metric
        rows.append(long)
    return pd.concat(rows, ignore_index=True)[["level", "time", "observed", "metric", "score"]]


def rank_histogram_analysis(ds: xr.Dataset, observed_only: bool, seed: int = 0) -> pd.DataFrame:
    """Rank histogram of one analysis file per level, as a tidy table.

    Returns:
        DataFrame with columns ``level, rank, count`` (rank = 0..M), counts over (time, lat, lon).
    """
    ds = _select_days(ds, observed_only)
    analysis = ds["analysis"]
    if MEMBER not in analysis.dims:
        analysis = analysis.expand_dims(MEMBER)
    histogram = rank_histogram(ds["truth"], analysis, DEFAULT_DIMS, seed=seed)
    table = histogram.transpose("level", "rank").to_dataframe().reset_index()
    return table[["level", "rank", "count"]]
