"""Scoring of analysis files into the one tidy table that every figure reads."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import xarray as xr

from slams.metrics import score_analysis

log = logging.getLogger(__name__)

COLUMNS = ["method", "axis", "value", "level", "days", "metric", "score"]


def score_file(path: str | Path) -> pd.DataFrame:
    """Scores of one analysis file on observed days and on all days, tidy."""
    with xr.open_dataset(path) as ds:
        frames = []
        for days, observed_only in (("observed", True), ("all", False)):
            table = score_analysis(ds.load(), observed_only=observed_only)
            table["days"] = days
            frames.append(table)
        table = pd.concat(frames, ignore_index=True)
        table["method"] = ds.attrs["method"]
        table["axis"] = ds.attrs["axis"]
        table["value"] = float(ds.attrs["value"])
    return table[COLUMNS]


def score_files(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate the scores of many analysis files, sorted for reading."""
    frames = []
    for path in paths:
        log.info("scoring %s", path)
        frames.append(score_file(path))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["axis", "value", "method", "metric", "days", "level"]).reset_index(
        drop=True
    )
