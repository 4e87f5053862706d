"""Tests of slams.evaluate: analysis files into the tidy score and rank-histogram tables."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_files import LEVELS, analysis_dataset, write_analysis

from slams.evaluate import (
    COLUMNS,
    DAILY_COLUMNS,
    RANK_COLUMNS,
    evaluate_dataset,
    evaluate_files,
)
from slams.metrics import rmse


def test_evaluate_dataset_scores_and_rank_histograms():
    ds = analysis_dataset("pixel", "gap", 8.0, n_members=3, n_days=4, every=2)
    scores, ranks, daily = evaluate_dataset(ds)
    assert list(scores.columns) == COLUMNS and list(ranks.columns) == RANK_COLUMNS
    assert set(scores["days"]) == set(ranks["days"]) == {"observed", "all"}
    assert set(scores["metric"]) == {
        "wasserstein",
        "wasserstein_normalised",
        "rmse",
        "bias",
        "crps",
        "spread_skill",
    }
    assert (scores["method"] == "pixel").all() and (scores["axis"] == "gap").all()
    assert (scores["value"] == 8.0).all()
    row = scores[(scores["metric"] == "rmse") & (scores["days"] == "all")]
    expected = rmse(ds["truth"], ds["analysis"]).values
    np.testing.assert_allclose(row.sort_values("level")["score"].values, expected, rtol=1e-6)
    # 4 ranks per level and days; every grid point of every (observed) day is counted once
    assert len(ranks) == 2 * len(LEVELS) * 4
    per_level = ranks.groupby(["days", "level"])["count"].sum()
    grid = ds.sizes["lat"] * ds.sizes["lon"]
    assert (per_level["all"] == 4 * grid).all() and (per_level["observed"] == 2 * grid).all()
    # every day's MSE and CRPS per level; their means over days are the table's scores
    assert list(daily.columns) == DAILY_COLUMNS and len(daily) == 2 * len(LEVELS) * 4
    mse = daily[daily["metric"] == "mse"].groupby("level")["score"].mean()
    np.testing.assert_allclose(np.sqrt(mse.values), expected, rtol=1e-6)
    crps = daily[(daily["metric"] == "crps") & daily["observed"]].groupby("level")["score"].mean()
    table = scores[(scores["metric"] == "crps") & (scores["days"] == "observed")]
    np.testing.assert_allclose(crps.values, table.sort_values("level")["score"].values,
                               rtol=1e-6)  # fmt: skip


def test_single_member_has_no_rank_histogram():
    scores, ranks, _ = evaluate_dataset(analysis_dataset("climatology", n_members=1))
    assert ranks.empty and list(ranks.columns) == RANK_COLUMNS
    assert "crps" in set(scores["metric"]) and "spread_skill" not in set(scores["metric"])


def test_evaluate_files_sorted_and_every_file_read(tmp_path):
    paths = [
        write_analysis(tmp_path, "oi", "noise", 4.0, n_days=2, seed=1),
        write_analysis(tmp_path, "pixel", "coarsen", 2.0, n_days=2, seed=2),
        write_analysis(tmp_path, "climatology", "coarsen", 2.0, n_days=2, n_members=1, seed=3),
    ]
    scores, ranks, daily = evaluate_files(paths)
    assert set(daily["method"]) == {"oi", "pixel", "climatology"}
    assert set(scores["method"]) == {"oi", "pixel", "climatology"}
    assert set(ranks["method"]) == {"oi", "pixel"}
    assert list(scores["axis"]) == sorted(scores["axis"])  # coarsen rows before noise rows
    assert np.isfinite(scores["score"]).all()
    with pytest.raises(ValueError, match="at least one"):
        evaluate_files([])
