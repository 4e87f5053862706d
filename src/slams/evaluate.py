"""Scoring of analysis files into the tidy tables that every figure reads.

``scores.csv``: ``protocol, method, axis, value, level, days, metric, score`` (one row per
score). ``rank-histograms.csv``: ``protocol, method, axis, value, level, days, rank, count``
(one row per rank bin; only ensembles of at least 2 members, since one member has no ranks to
speak of). ``protocol`` is the observation protocol (``paper`` or ``physical``), ``days`` is
``observed`` (the days with an observation) or ``all``. ``daily-scores.csv``: ``protocol,
method, axis, value, level, time, observed, metric, score`` with every day's MSE of the
ensemble mean (``mse``, K²) and CRPS (K) per level: what the bootstrap intervals resample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import xarray as xr

from slams.metrics import MEMBER, daily_scores, rank_histogram_analysis, score_analysis

log = logging.getLogger(__name__)

COLUMNS = ["protocol", "method", "axis", "value", "level", "days", "metric", "score"]
DAILY_COLUMNS = [
    "protocol", "method", "axis", "value", "level", "time", "observed", "metric", "score",
]  # fmt: skip
RANK_COLUMNS = ["protocol", "method", "axis", "value", "level", "days", "rank", "count"]
SORT = ["protocol", "axis", "value", "method"]
DAYS = (("observed", True), ("all", False))


def _label(table: pd.DataFrame, ds: xr.Dataset, columns: list[str]) -> pd.DataFrame:
    table["protocol"] = ds.attrs["protocol"]
    table["method"] = ds.attrs["method"]
    table["axis"] = ds.attrs["axis"]
    table["value"] = float(ds.attrs["value"])
    return table[columns]


def evaluate_dataset(ds: xr.Dataset) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores, rank histograms and daily scores of one loaded analysis dataset.

    Returns:
        ``(scores, rank_histograms, daily)`` with columns :data:`COLUMNS`,
        :data:`RANK_COLUMNS` and :data:`DAILY_COLUMNS`; scores and histograms on observed and
        on all days; the rank histogram table is empty for a single-member analysis
        (climatology); ``daily`` holds every day's MSE and CRPS per level
        (:func:`slams.metrics.daily_scores`).
    """
    scores, histograms = [], []
    has_ensemble = ds["analysis"].sizes.get(MEMBER, 1) >= 2
    for days, observed_only in DAYS:
        table = score_analysis(ds, observed_only=observed_only)
        table["days"] = days
        scores.append(table)
        if has_ensemble:
            # a fixed seed: reproducible tie breaking (ties are rare in float data)
            table = rank_histogram_analysis(ds, observed_only=observed_only, seed=0)
            table["days"] = days
            histograms.append(table)
    score_table = _label(pd.concat(scores, ignore_index=True), ds, COLUMNS)
    if histograms:
        rank_table = _label(pd.concat(histograms, ignore_index=True), ds, RANK_COLUMNS)
    else:
        rank_table = pd.DataFrame(columns=RANK_COLUMNS)
    daily = _label(daily_scores(ds), ds, DAILY_COLUMNS)
    return score_table, rank_table, daily


def evaluate_files(
    paths: Iterable[str | Path],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores, rank histograms and daily scores of many analysis files (each read once),
    sorted for reading."""
    scores, histograms, daily = [], [], []
    for path in paths:
        log.info("scoring %s", path)
        with xr.open_dataset(path) as ds:
            try:
                score_table, rank_table, daily_table = evaluate_dataset(ds.load())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
        scores.append(score_table)
        daily.append(daily_table)
        if not rank_table.empty:
            histograms.append(rank_table)
    if not scores:
        raise ValueError("evaluate_files needs at least one analysis file")
    score_table = pd.concat(scores, ignore_index=True)
    score_table = score_table.sort_values([*SORT, "metric", "days", "level"]).reset_index(drop=True)
    if histograms:
        rank_table = pd.concat(histograms, ignore_index=True)
        rank_table = rank_table.sort_values([*SORT, "days", "level", "rank"]).reset_index(drop=True)
    else:
        rank_table = pd.DataFrame(columns=RANK_COLUMNS)
    daily_table = (
        pd.concat(daily, ignore_index=True)
        .sort_values([*SORT, "metric", "level", "time"])
        .reset_index(drop=True)
    )
    return score_table, rank_table, daily_table
