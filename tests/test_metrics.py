"""Tests of slams.metrics against hand-computed cases, scipy and analytic limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from slams.metrics import (
    bias,
    crps,
    rank_histogram,
    rank_histogram_analysis,
    rmse,
    score_analysis,
    spread,
    spread_skill,
    wasserstein,
)

RESOLUTION = 11.25  # 16 x 32 cell-centred grid
LAT = np.arange(-90 + RESOLUTION / 2, 90, RESOLUTION)
LON = np.arange(RESOLUTION / 2, 360, RESOLUTION)
LEVELS = [200.0, 850.0]


def expected_weights(lat: np.ndarray = LAT) -> np.ndarray:
    """Area weights computed independently of slams.grid: sin-edge differences, mean 1."""
    half = RESOLUTION / 2
    north = np.sin(np.deg2rad(np.minimum(lat + half, 90)))
    south = np.sin(np.deg2rad(np.maximum(lat - half, -90)))
    weights = north - south
    return weights / weights.mean()


def field(values: np.ndarray, *, member: bool = False, n_levels: int | None = None):
    """Wrap an array as a labelled (member?, time, level?, lat, lon) DataArray."""
    dims = ["time", "lat", "lon"]
    if n_levels is not None:
        dims.insert(1, "level")
    if member:
        dims.insert(0, "member")
    coords = {"lat": LAT, "lon": LON, "time": np.arange(values.shape[dims.index("time")])}
    if n_levels is not None:
        coords["level"] = LEVELS[:n_levels]
    return xr.DataArray(values, dims=dims, coords=coords)


def grid_shape(n_time: int) -> tuple[int, int, int]:
    return (n_time, LAT.size, LON.size)


# --------------------------------------------------------------------------- wasserstein


def test_wasserstein_hand_cases():
    # Shift of a distribution by 1 -> W1 = 1, whatever the values' positions.
    truth = field(np.zeros(grid_shape(2)))
    shifted = field(np.ones(grid_shape(2)))
    assert float(wasserstein(truth, shifted)) == pytest.approx(1.0)
    # Same values permuted in space: distribution unchanged -> 0 (W1 ignores locations).
    rng = np.random.default_rng(0)
    values = rng.normal(size=grid_shape(2))
    permuted = rng.permutation(values.ravel()).reshape(values.shape)
    assert float(wasserstein(field(values), field(permuted))) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_point_masses_by_hand():
    # truth: half the points 0, half 2; analysis all 1 -> each unit of mass moves by 1.
    values = np.zeros(grid_shape(1))
    values[..., ::2] = 2.0
    assert float(wasserstein(field(values), field(np.ones(grid_shape(1))))) == pytest.approx(1.0)


def test_wasserstein_matches_scipy_pooling_members_per_level():
    rng = np.random.default_rng(1)
    truth = field(rng.normal(size=(3, 2, LAT.size, LON.size)), n_levels=2)
    analysis = field(
        rng.normal(0.3, 1.5, size=(4, 3, 2, LAT.size, LON.size)), member=True, n_levels=2
    )
    result = wasserstein(truth, analysis, dims=("time", "lat", "lon"))
    assert result.dims == ("level",)
    for index, level in enumerate(LEVELS):
        expected = scipy.stats.wasserstein_distance(
            truth.sel(level=level).values.ravel(), analysis.sel(level=level).values.ravel()
        )
        assert float(result[index]) == pytest.approx(expected, rel=1e-12)


def test_wasserstein_weighted_matches_scipy_with_area_weights():
    rng = np.random.default_rng(2)
    # Values depend on latitude so that weighting matters.
    truth = field(rng.normal(size=grid_shape(3)) + np.cos(np.deg2rad(LAT))[:, None] * 5)
    analysis = field(rng.normal(size=(2, *grid_shape(3))), member=True)
    weights = np.broadcast_to(expected_weights()[:, None], (LAT.size, LON.size))
    expected = scipy.stats.wasserstein_distance(
        truth.values.ravel(),
        analysis.values.ravel(),
        u_weights=np.broadcast_to(weights, truth.shape).ravel(),
        v_weights=np.broadcast_to(weights, analysis.shape).ravel(),
    )
    weighted = float(wasserstein(truth, analysis, weighted=True))
    assert weighted == pytest.approx(expected, rel=1e-10)
    assert weighted != pytest.approx(float(wasserstein(truth, analysis)), rel=1e-3)


def test_wasserstein_with_ties_matches_scipy():
    # Integer values: many exact ties within and across the two samples.
    rng = np.random.default_rng(11)
    truth = field(rng.integers(0, 5, size=grid_shape(2)).astype(float))
    analysis = field(rng.integers(1, 7, size=(3, *grid_shape(2))).astype(float), member=True)
    expected = scipy.stats.wasserstein_distance(truth.values.ravel(), analysis.values.ravel())
    assert float(wasserstein(truth, analysis)) == pytest.approx(expected, rel=1e-12)
    weights = np.broadcast_to(expected_weights()[:, None], (LAT.size, LON.size))
    expected = scipy.stats.wasserstein_distance(
        truth.values.ravel(),
        analysis.values.ravel(),
        u_weights=np.broadcast_to(weights, truth.shape).ravel(),
        v_weights=np.broadcast_to(weights, analysis.shape).ravel(),
    )
    assert float(wasserstein(truth, analysis, weighted=True)) == pytest.approx(expected, rel=1e-10)


def test_wasserstein_is_nan_with_a_nan_and_checks_dims():
    rng = np.random.default_rng(3)
    values = rng.normal(size=grid_shape(2))
    other = rng.normal(size=grid_shape(2))
    with_nan = values.copy()
    with_nan[0, 0, 0] = np.nan
    assert np.isnan(float(wasserstein(field(with_nan), field(other))))
    assert np.isnan(float(wasserstein(field(values), field(with_nan), weighted=True)))
    with pytest.raises(ValueError, match="not dimensions"):
        wasserstein(field(values), field(other), dims=("time", "latitude"))
    with pytest.raises(ValueError, match="lat"):
        wasserstein(field(values), field(other), dims=("time", "lon"), weighted=True)


# --------------------------------------------------------------------------- rmse / bias


def test_rmse_is_sqrt_of_time_mean_of_mse_of_ensemble_mean():
    truth = field(np.zeros(grid_shape(2)))
    analysis = np.zeros((2, *grid_shape(2)))
    # Members +-5 around an ensemble mean of 3 on day 0 and 4 on day 1.
    analysis[:, 0] = 3.0
    analysis[:, 1] = 4.0
    analysis[0] += 5.0
    analysis[1] -= 5.0
    result = float(rmse(truth, field(analysis, member=True)))
    # sqrt((9 + 16) / 2), not the mean of daily RMSEs (3.5) nor the members' RMSE.
    assert result == pytest.approx(math.sqrt(12.5))


def test_rmse_area_weighting_poles_count_less_than_equator():
    truth = field(np.zeros(grid_shape(1)))
    pole_error = np.zeros(grid_shape(1))
    pole_error[:, [0, -1], :] = 1.0
    equator_error = np.zeros(grid_shape(1))
    equator = [LAT.size // 2 - 1, LAT.size // 2]
    equator_error[:, equator, :] = 1.0
    at_poles = float(rmse(truth, field(pole_error)))
    at_equator = float(rmse(truth, field(equator_error)))
    assert at_poles < at_equator
    # Exact: error 1 on rows R -> sqrt(sum_R w / sum w) with mean-1 weights.
    weights = expected_weights()
    assert at_poles == pytest.approx(math.sqrt(weights[[0, -1]].sum() / LAT.size), rel=1e-6)
    assert at_equator == pytest.approx(math.sqrt(weights[equator].sum() / LAT.size), rel=1e-6)


def test_rmse_keeps_levels_and_bias_sign():
    truth = field(np.full((2, 2, LAT.size, LON.size), 250.0), n_levels=2)
    analysis = truth.copy() + xr.DataArray([2.0, -1.0], dims="level", coords={"level": LEVELS})
    assert rmse(truth, analysis).dims == ("level",)
    np.testing.assert_allclose(rmse(truth, analysis).values, [2.0, 1.0])
    np.testing.assert_allclose(bias(truth, analysis).values, [2.0, -1.0])


def test_bias_is_area_weighted():
    truth = field(np.zeros(grid_shape(1)))
    error = np.zeros(grid_shape(1))
    error[:, -1, :] = 3.0  # only the northernmost row is warm
    expected = 3.0 * expected_weights()[-1] / LAT.size
    assert float(bias(truth, field(error))) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- CRPS


def fair_crps_double_loop(members: np.ndarray, truth: float) -> float:
    n = members.size
    skill = sum(abs(x - truth) for x in members) / n
    pairs = sum(abs(xi - xj) for xi in members for xj in members)
    return skill - pairs / (2 * n * (n - 1))


def test_crps_hand_case():
    # Members {0, 2}: mean|X - y| - |0 - 2| * 2 / (2 * 2 * 1) = mean|X - y| - 1.
    members = np.zeros((2, *grid_shape(1)))
    members[1] = 2.0
    for y, expected in ((1.0, 0.0), (3.0, 1.0), (0.0, 0.0)):
        truth = field(np.full(grid_shape(1), y))
        assert float(crps(truth, field(members, member=True))) == pytest.approx(expected)


def test_crps_matches_double_loop_with_area_weights():
    rng = np.random.default_rng(4)
    n_members, n_time = 5, 2
    truth = field(rng.normal(size=grid_shape(n_time)))
    analysis = field(rng.normal(0.5, 2.0, size=(n_members, *grid_shape(n_time))), member=True)
    per_point = np.empty(grid_shape(n_time))
    for index in np.ndindex(*per_point.shape):
        per_point[index] = fair_crps_double_loop(
            analysis.values[(slice(None), *index)], truth.values[index]
        )
    weights = expected_weights()[None, :, None]
    daily = (per_point * weights).sum(axis=(1, 2)) / (weights.sum() * LON.size)
    assert float(crps(truth, analysis)) == pytest.approx(daily.mean(), rel=1e-10)


def test_crps_large_ensemble_approaches_gaussian_closed_form():
    # CRPS(N(0, 1), y) = y (2 Phi(y) - 1) + 2 phi(y) - 1 / sqrt(pi).
    rng = np.random.default_rng(5)
    y = np.linspace(-2.5, 2.5, LAT.size)[None, :, None] * np.ones(grid_shape(1))
    members = rng.normal(size=(1000, *grid_shape(1)))
    closed = (
        y * (2 * scipy.stats.norm.cdf(y) - 1) + 2 * scipy.stats.norm.pdf(y) - 1 / np.sqrt(np.pi)
    )
    weights = expected_weights()[None, :, None]
    expected = (closed * weights).sum() / (weights.sum() * LON.size)
    result = float(crps(field(y), field(members, member=True)))
    assert result == pytest.approx(expected, rel=0.02)


# --------------------------------------------------------------------------- spread / skill


def synthetic_ensemble(n_members: int, member_scale: float, seed: int, n_time: int = 40):
    """Truth and members drawn around the same per-point mean; truth has std 1 + lat term."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(250.0, 10.0, size=grid_shape(n_time))
    scale = 1.0 + np.abs(np.sin(np.deg2rad(LAT)))[None, :, None]
    truth = mean + scale * rng.normal(size=grid_shape(n_time))
    members = mean + member_scale * scale * rng.normal(size=(n_members, *grid_shape(n_time)))
    return field(truth), field(members, member=True)


def test_spread_skill_hand_case():
    # Members {0, 2}, truth 0: error of mean 1, var(ddof=1) = 2 -> sqrt(3/2) * sqrt(2) / 1.
    members = np.zeros((2, *grid_shape(1)))
    members[1] = 2.0
    ratio = float(spread_skill(field(np.zeros(grid_shape(1))), field(members, member=True)))
    assert ratio == pytest.approx(math.sqrt(3.0))


def test_spread_skill_calibrated_small_ensemble_is_one():
    # M = 5 makes the finite-ensemble correction and ddof=1 matter (without: 0.91 / 0.89).
    truth, analysis = synthetic_ensemble(n_members=5, member_scale=1.0, seed=6)
    assert float(spread_skill(truth, analysis)) == pytest.approx(1.0, rel=0.05)


def test_spread_skill_underdispersive_is_below_one():
    truth, analysis = synthetic_ensemble(n_members=10, member_scale=0.5, seed=7)
    assert float(spread_skill(truth, analysis)) < 0.7


# --------------------------------------------------------------------------- rank histogram


def test_rank_histogram_hand_case():
    members = np.stack([np.full(grid_shape(1), v) for v in (1.0, 2.0, 3.0)])
    truth = np.full(grid_shape(1), 2.5)
    truth[:, 0, :] = 0.0  # rank 0 on one row
    truth[:, 1, :] = 5.0  # rank 3 on another row
    counts = rank_histogram(field(truth), field(members, member=True))
    assert counts.dims == ("rank",)
    n_row = LON.size
    np.testing.assert_array_equal(counts.values, [n_row, 0, (LAT.size - 2) * n_row, n_row])
    truth[:, 2, 0] = np.nan  # no rank: an error, not a point left out
    with pytest.raises(ValueError, match="1 points with a NaN have no rank"):
        rank_histogram(field(truth), field(members, member=True))


def test_rank_histogram_breaks_ties_at_random_reproducibly():
    members = np.ones((3, *grid_shape(8)))
    truth = field(np.ones(grid_shape(8)))
    counts = rank_histogram(truth, field(members, member=True), seed=1).values
    assert counts.sum() == truth.size
    # All 4 ranks equally likely: 1024 each in expectation.
    assert counts.min() > 0.85 * truth.size / 4
    repeat = rank_histogram(truth, field(members, member=True), seed=1).values
    np.testing.assert_array_equal(counts, repeat)


def test_rank_histogram_flat_when_calibrated_u_shaped_when_underdispersive():
    truth, analysis = synthetic_ensemble(n_members=9, member_scale=1.0, seed=8)
    counts = rank_histogram(truth, analysis).values
    assert counts.shape == (10,)
    assert counts.max() / counts.min() < 1.2
    truth, analysis = synthetic_ensemble(n_members=9, member_scale=0.5, seed=9)
    counts = rank_histogram(truth, analysis).values
    middle = counts[3:7].mean()
    assert counts[0] > 2 * middle and counts[-1] > 2 * middle


# --------------------------------------------------------------------------- analysis files


def analysis_dataset(n_members: int, seed: int = 10) -> xr.Dataset:
    """6 days, days 0 and 3 observed: perfect analysis there, wrong on the other days."""
    rng = np.random.default_rng(seed)
    n_time = 6
    truth = 250.0 + 5.0 * rng.normal(size=(n_time, 2, LAT.size, LON.size))
    analysis = np.repeat(truth[None], n_members, axis=0)
    observed = np.array([1, 0, 0, 1, 0, 0], dtype=np.int8)
    unobserved = observed == 0
    analysis[:, unobserved] += 2.0 + rng.normal(size=analysis[:, unobserved].shape)
    return xr.Dataset(
        {
            "analysis": field(analysis, member=True, n_levels=2),
            "truth": field(truth, n_levels=2),
            "observed": ("time", observed),
        }
    )


def test_score_analysis_columns_rows_and_metrics():
    table = score_analysis(analysis_dataset(n_members=3), observed_only=False)
    assert list(table.columns) == ["level", "metric", "score"]
    metrics = ["wasserstein", "wasserstein_normalised", "rmse", "bias", "crps", "spread_skill"]
    assert sorted(table["metric"].unique()) == sorted(metrics)
    assert len(table) == len(metrics) * len(LEVELS)
    assert set(table["level"]) == set(LEVELS)
    assert not table["score"].isna().any()
    # Rows are the metric functions' values; normalised = W1 / std(truth).
    ds = analysis_dataset(n_members=3)
    by_key = table.set_index(["metric", "level"])["score"]
    expected_rmse = rmse(ds["truth"], ds["analysis"]).sel(level=850.0)
    assert by_key["rmse", 850.0] == pytest.approx(float(expected_rmse))
    truth_std = float(ds["truth"].sel(level=200.0).std())
    assert by_key["wasserstein_normalised", 200.0] == pytest.approx(
        by_key["wasserstein", 200.0] / truth_std
    )


def test_score_analysis_single_member_skips_spread_skill():
    ds = analysis_dataset(n_members=1)
    table = score_analysis(ds, observed_only=False)
    metrics = {"wasserstein", "wasserstein_normalised", "rmse", "bias", "crps"}
    assert set(table["metric"]) == metrics
    assert len(table) == len(metrics) * len(LEVELS)
    # one member: the CRPS of a point forecast, its mean absolute error (>= bias, <= rmse)
    by_key = table.set_index(["metric", "level"])["score"]
    for level in LEVELS:
        assert abs(by_key["bias", level]) <= by_key["crps", level] <= by_key["rmse", level]


def test_score_analysis_observed_only_uses_observed_days():
    ds = analysis_dataset(n_members=2)
    observed = score_analysis(ds, observed_only=True).set_index(["metric", "level"])["score"]
    every_day = score_analysis(ds, observed_only=False).set_index(["metric", "level"])["score"]
    for metric in ("rmse", "wasserstein", "bias", "crps"):
        for level in LEVELS:
            assert observed[metric, level] == pytest.approx(0.0, abs=1e-9)
            assert abs(every_day[metric, level]) > 0.5
    ds["observed"][:] = 0
    with pytest.raises(ValueError, match="no observed day"):
        score_analysis(ds, observed_only=True)


def test_rank_histogram_analysis_table():
    ds = analysis_dataset(n_members=3)
    table = rank_histogram_analysis(ds, observed_only=False)
    assert list(table.columns) == ["level", "rank", "count"]
    assert len(table) == len(LEVELS) * 4
    per_level = table.groupby("level")["count"].sum()
    assert (per_level == 6 * LAT.size * LON.size).all()


# --------------------------------------------------------------------------- against `scores`
# The same arrays through a maintained verification library (scores, Bureau of Meteorology):
# fair CRPS, RMSE and mean error with area weights, and rank histograms.


def library_case(seed: int = 12, n_members: int = 5):
    rng = np.random.default_rng(seed)
    truth = field(rng.normal(size=(3, 2, LAT.size, LON.size)), n_levels=2)
    analysis = field(
        rng.normal(0.3, 1.5, size=(n_members, 3, 2, LAT.size, LON.size)), member=True, n_levels=2
    )
    weights = xr.DataArray(expected_weights(), dims="lat", coords={"lat": LAT})
    return truth, analysis, weights


def test_crps_rmse_bias_match_scores_library():
    probability = pytest.importorskip("scores.probability")
    continuous = pytest.importorskip("scores.continuous")
    truth, analysis, weights = library_case()
    kwargs = {"preserve_dims": ["level"], "weights": weights}
    expected = probability.crps_for_ensemble(analysis, truth, "member", method="fair", **kwargs)
    np.testing.assert_allclose(crps(truth, analysis).values, expected.values, rtol=1e-10)
    mean = analysis.mean("member")
    expected = continuous.rmse(mean, truth, **kwargs)
    np.testing.assert_allclose(rmse(truth, analysis).values, expected.values, rtol=1e-10)
    expected = continuous.mean_error(mean, truth, **kwargs)
    np.testing.assert_allclose(bias(truth, analysis).values, expected.values, rtol=1e-10)


def test_rank_histogram_matches_scores_library_frequencies():
    probability = pytest.importorskip("scores.probability")
    truth, analysis, _ = library_case(seed=13, n_members=4)
    counts = rank_histogram(truth, analysis)
    assert counts.dims == ("level", "rank")
    expected = probability.rank_histogram(analysis, truth, "member", preserve_dims=["level"])
    # scores ranks 1..M+1 and shares ties; continuous data have none
    frequency = counts / counts.sum("rank")
    np.testing.assert_allclose(
        frequency.transpose("level", "rank").values,
        expected.transpose("level", "rank").values,
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- spread, M = 1 CRPS


def test_spread_hand_case_and_map():
    # Members {0, 2}: s^2 = 2 (ddof=1); corrected spread sqrt(3/2) * sqrt(2) = sqrt(3).
    members = np.zeros((2, *grid_shape(3)))
    members[1] = 2.0
    analysis = field(members, member=True)
    assert float(spread(analysis)) == pytest.approx(math.sqrt(3.0))
    assert float(spread(analysis, corrected=False)) == pytest.approx(math.sqrt(2.0))
    per_point = spread(analysis, dims=("time",))
    assert per_point.dims == ("lat", "lon")
    np.testing.assert_allclose(per_point.values, math.sqrt(3.0))
    with pytest.raises(ValueError, match="at least 2 members"):
        spread(field(members[:1], member=True))


def test_spread_skill_is_spread_over_rmse():
    truth, analysis = synthetic_ensemble(n_members=3, member_scale=0.7, seed=14, n_time=4)
    ratio = float(spread_skill(truth, analysis))
    assert ratio == pytest.approx(float(spread(analysis) / rmse(truth, analysis)), rel=1e-12)
    # the correction is sqrt((M+1)/M) with M = 3, not e.g. sqrt(M/(M-1))
    uncorrected = float(spread(analysis, corrected=False) / rmse(truth, analysis))
    assert ratio / uncorrected == pytest.approx(math.sqrt(4 / 3), rel=1e-12)


def test_crps_of_one_member_is_area_weighted_mean_absolute_error():
    truth = field(np.zeros(grid_shape(2)))
    error = np.zeros((1, *grid_shape(2)))
    error[0, :, -1, :] = -3.0  # the northernmost row is 3 K too cold on both days
    expected = 3.0 * expected_weights()[-1] / LAT.size
    assert float(crps(truth, field(error, member=True))) == pytest.approx(expected, rel=1e-6)
    assert float(crps(truth, field(error[0]))) == pytest.approx(expected, rel=1e-6)


def test_a_diverged_member_never_leaves_a_finite_score():
    """One NaN in one member: every score that reduces over it is NaN, none is computed from
    the other members or points, and a whole analysis file is refused with one line."""
    truth, analysis = synthetic_ensemble(n_members=4, member_scale=1.0, seed=9, n_time=3)
    analysis = analysis.copy()
    analysis[2, 1, 3, 4] = np.nan
    for metric in (rmse, crps, spread_skill, wasserstein):
        assert np.isnan(float(metric(truth, analysis))), metric.__name__
    ds = analysis_dataset(n_members=3)
    ds["analysis"][1, 2, 0, 5, 6] = np.inf
    with pytest.raises(ValueError, match=r"analysis has 1 non-finite values \(first at member 1,"):
        score_analysis(ds, observed_only=False)
