"""Confidence intervals of scores and of differences between methods: a paired moving-block
bootstrap over days.

Consecutive days of an analysis are correlated (the weather persists, the prior carries
observations forward), so days are not resampled one by one but in blocks of ``block``
consecutive days (Künsch 1989): a resample concatenates blocks whose first days are drawn
uniformly from ``0 .. n - block``, cut to ``n`` days. Comparisons are paired: the same
resampled days for both methods and every level, so what the methods share (a hard day)
cancels. The block length defaults to ``ceil(sqrt(n))``: 4 days for 10, 20 for 365. Shorter
blocks (the ``n^(1/3)`` that is optimal for the variance's mean squared error) underestimate
the variance of correlated days, since the bootstrap only sees correlations within a block.

The statistics are those of ``scores.csv`` per level, from the daily values of
``daily-scores.csv``: ``rmse = sqrt(mean_days mse)``, ``crps = mean_days crps``; a level mean
is the mean of the per-level statistics. The 95 % interval is the statistic (or the paired
difference) plus or minus ``t_{0.975, k-1}`` times its bootstrap standard error, ``k = n //
block`` the number of whole blocks (at least 2): the bootstrap's own percentiles were far too
narrow for few correlated days. Two methods with identically distributed AR(1) (0.6) daily
errors are called different in 0 % of cases at 10 days, 4 % at 40, 8.5 % at 120 and 7 % at 365
(nominal 5 %; percentiles with ``n^(1/3)`` blocks: 37 %, 20 %, 15 %, 8 %;
``tests/test_significance.py``). With the demo's 16 days (4 blocks; 4 observed days in 2
blocks where every fourth day is observed) little is significant: that is the honest answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

METRICS = ("rmse", "crps")
# the daily quantity each statistic is computed from
DAILY = {"rmse": "mse", "crps": "crps"}
SIGNIFICANCE_COLUMNS = [
    "protocol", "axis", "value", "days", "level", "metric", "method", "reference",
    "difference", "low", "high", "significant", "block_days", "samples",
]  # fmt: skip
INTERVAL_COLUMNS = [
    "protocol", "method", "axis", "value", "days", "level", "metric", "score", "low", "high",
    "block_days", "samples",
]  # fmt: skip


def default_block(n_days: int) -> int:
    """``ceil(sqrt(n))`` days, at least 1."""
    return max(1, math.ceil(math.sqrt(n_days) - 1e-9))


def block_indices(n_days: int, block: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``(samples, n_days)`` day indices of moving-block resamples."""
    if n_days < 1:
        raise ValueError("a bootstrap needs at least one day")
    block = min(block, n_days)
    n_blocks = math.ceil(n_days / block)
    starts = rng.integers(0, n_days - block + 1, size=(samples, n_blocks))
    indices = (starts[:, :, None] + np.arange(block)).reshape(samples, -1)
    return indices[:, :n_days]


def statistic(metric: str, daily: np.ndarray) -> np.ndarray:
    """The score from daily values ``(..., days)``: RMSE from daily MSEs, CRPS from daily CRPS."""
    mean = daily.mean(axis=-1)
    return np.sqrt(mean) if metric == "rmse" else mean


def _resampled(metric: str, daily: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The statistic of every resample: ``daily (levels, days)`` -> ``(samples, levels)``."""
    return statistic(metric, daily[:, indices].transpose(1, 0, 2))


def interval(point: float, boot: np.ndarray, blocks: int) -> tuple[float, float]:
    """``point`` plus or minus ``t_{0.975, blocks - 1}`` bootstrap standard errors."""
    from scipy.stats import t as student

    half = student.ppf(0.975, max(blocks, 2) - 1) * float(np.std(boot, ddof=1))
    return float(point) - half, float(point) + half


def daily_matrix(table: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(levels, days)`` of one cell's daily values of ``metric``'s quantity, the levels and
    the days (sorted)."""
    rows = table[table["metric"] == DAILY[metric]]
    wide = rows.pivot(index="level", columns="time", values="score").sort_index()
    wide = wide.reindex(sorted(wide.columns), axis=1)
    if wide.isna().any().any():
        raise ValueError(f"daily {DAILY[metric]} values are missing for some level and day")
    return wide.to_numpy(float), wide.index.to_numpy(), wide.columns.to_numpy()


def _cells(daily: pd.DataFrame, days: str):
    selected = daily if days == "all" else daily[daily["observed"].astype(bool)]
    yield from selected.groupby(["protocol", "axis", "value"], sort=False)


def comparisons(methods: Iterable[str]) -> list[tuple[str, str]]:
    """``(method, reference)`` pairs: every method against ``pixel``, and what observing
    precipitation and OLR changes in each family: latent-both against latent-none, oi-both
    against oi, pixel-both against pixel (already among the first)."""
    present = list(dict.fromkeys(methods))
    pairs = [(m, "pixel") for m in present if m != "pixel" and "pixel" in present]
    for method, reference in (("latent-both", "latent-none"), ("oi-both", "oi")):
        if method in present and reference in present:
            pairs.append((method, reference))
    return pairs


def significance(
    daily: pd.DataFrame,
    samples: int = 1000,
    block: int | None = None,
    seed: int = 0,
    days: Sequence[str] = ("observed", "all"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Intervals of every method's scores and of the paired differences of the comparisons.

    ``daily``: ``daily-scores.csv`` (``protocol, method, axis, value, level, time, observed,
    metric, score`` with metrics ``mse``, ``crps``). Returns ``(significance, intervals)``
    with columns :data:`SIGNIFICANCE_COLUMNS` and :data:`INTERVAL_COLUMNS`; ``level`` is the
    pressure level or ``"mean"`` (the mean over levels). ``difference = method - reference``
    (negative: the method has the lower error); ``significant``: the interval excludes 0.
    """
    rng = np.random.default_rng(seed)
    sig_rows, interval_rows = [], []
    for which in days:
        for (protocol, axis, value), cell in _cells(daily, which):
            methods = list(dict.fromkeys(cell["method"]))
            n_days = cell["time"].nunique()
            length = min(block or default_block(n_days), n_days)
            indices = block_indices(n_days, length, samples, rng)
            blocks = n_days // length
            for metric in METRICS:
                matrices, levels = {}, None
                for method in methods:
                    one = cell[cell["method"] == method]
                    if DAILY[metric] not in set(one["metric"]):
                        continue
                    matrices[method], levels, _ = daily_matrix(one, metric)
                boot = {m: _resampled(metric, x, indices) for m, x in matrices.items()}
                point = {m: statistic(metric, x) for m, x in matrices.items()}
                common = {"protocol": protocol, "axis": axis, "value": value, "days": which,
                          "metric": metric, "block_days": length, "samples": samples}  # fmt: skip
                for method in matrices:
                    for index, level in enumerate([*levels, "mean"]):
                        take = slice(None) if level == "mean" else index
                        stat = point[method][take].mean()
                        low, high = interval(
                            stat, boot[method][:, take].reshape(samples, -1).mean(1), blocks
                        )
                        interval_rows.append({**common, "method": method, "level": level,
                                              "score": stat, "low": low, "high": high})  # fmt: skip
                for method, reference in comparisons(matrices):
                    difference = boot[method] - boot[reference]
                    for index, level in enumerate([*levels, "mean"]):
                        take = slice(None) if level == "mean" else index
                        stat = (point[method][take] - point[reference][take]).mean()
                        low, high = interval(
                            stat, difference[:, take].reshape(samples, -1).mean(1), blocks
                        )
                        sig_rows.append({**common, "method": method, "reference": reference,
                                         "level": level, "difference": stat, "low": low,
                                         "high": high,
                                         "significant": low > 0 or high < 0})  # fmt: skip
    return (
        pd.DataFrame(sig_rows, columns=SIGNIFICANCE_COLUMNS),
        pd.DataFrame(interval_rows, columns=INTERVAL_COLUMNS),
    )


def paired_difference(
    daily: pd.DataFrame,
    protocol: str,
    axis: str,
    value: float,
    metric: str,
    method: str,
    reference: str,
    days: str = "observed",
    samples: int = 1000,
    block: int | None = None,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(difference, low, high)`` of the level-mean ``metric`` of ``method - reference`` in
    one cell (what the summary uses to call a winner)."""
    cell = daily[(daily["protocol"] == protocol) & (daily["axis"] == axis)
                 & np.isclose(daily["value"], float(value))]  # fmt: skip
    if days == "observed":
        cell = cell[cell["observed"].astype(bool)]
    one, _, _ = daily_matrix(cell[cell["method"] == method], metric)
    two, _, _ = daily_matrix(cell[cell["method"] == reference], metric)
    n_days = one.shape[1]
    length = min(block or default_block(n_days), n_days)
    indices = block_indices(n_days, length, samples, np.random.default_rng(seed))
    difference = (_resampled(metric, one, indices) - _resampled(metric, two, indices)).mean(1)
    point = float((statistic(metric, one) - statistic(metric, two)).mean())
    low, high = interval(point, difference, n_days // length)
    return point, low, high
