"""The paired moving-block bootstrap: intervals that find real differences and not false ones."""

import numpy as np
import pandas as pd
import pytest

from slams.significance import (
    block_indices,
    comparisons,
    default_block,
    paired_difference,
    significance,
)


def ar1(n_days: int, rng: np.random.Generator, phi: float = 0.6) -> np.ndarray:
    """A stationary AR(1) series of unit variance: day-to-day correlated errors."""
    x = np.empty(n_days)
    x[0] = rng.normal()
    for day in range(1, n_days):
        x[day] = phi * x[day - 1] + np.sqrt(1 - phi**2) * rng.normal()
    return x


def daily_table(errors: dict[str, np.ndarray], levels=(500.0, 850.0)) -> pd.DataFrame:
    """daily-scores rows: per method an error series per level (``mse`` = error², ``crps`` =
    |error|), one cell."""
    rows = []
    for method, per_level in errors.items():
        for k, level in enumerate(levels):
            for day, error in enumerate(per_level[k]):
                for metric, score in (("mse", error**2), ("crps", abs(error))):
                    rows.append(["physical", method, "coarsen", 2.0, level, day, day % 2 == 0,
                                 metric, score])  # fmt: skip
    columns = ["protocol", "method", "axis", "value", "level", "time", "observed", "metric",
               "score"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_blocks_are_runs_of_consecutive_days():
    indices = block_indices(10, 3, 50, np.random.default_rng(0))
    assert indices.shape == (50, 10) and indices.min() >= 0 and indices.max() <= 9
    runs = indices.reshape(50, -1)[:, :9].reshape(50, 3, 3)
    assert (np.diff(runs, axis=-1) == 1).all()  # every block is 3 consecutive days
    assert default_block(10) == 4 and default_block(365) == 20 and default_block(1) == 1


def test_comparisons_are_against_pixel_and_latent_none():
    pairs = comparisons(["pixel", "pixel-both", "latent-none", "latent-both", "oi"])
    assert ("pixel-both", "pixel") in pairs and ("oi", "pixel") in pairs
    assert ("latent-both", "latent-none") in pairs and ("pixel", "pixel") not in pairs
    assert comparisons(["latent-none", "oi"]) == []
    # what precipitation and OLR add in each family: oi-both against oi as well
    pairs = comparisons(["pixel", "latent-none", "latent-both", "oi", "oi-both"])
    assert ("oi-both", "oi") in pairs and ("oi-both", "pixel") in pairs
    assert comparisons(["oi-both", "latent-none"]) == []


def test_a_real_difference_is_found_with_its_sign():
    rng = np.random.default_rng(1)
    shared = [ar1(60, rng) for _ in range(2)]  # the days' weather, common to both methods
    errors = {
        "pixel": [2.0 + s + 0.3 * ar1(60, rng) for s in shared],
        "latent-none": [1.5 + s + 0.3 * ar1(60, rng) for s in shared],  # 0.5 lower every day
    }
    table, intervals = significance(daily_table(errors), samples=500, days=("all",))
    mean = table[(table["level"] == "mean") & (table["metric"] == "crps")].iloc[0]
    assert mean["method"] == "latent-none" and mean["reference"] == "pixel"
    assert mean["significant"] and mean["high"] < 0 and mean["low"] < mean["difference"]
    assert mean["block_days"] == default_block(60) and mean["samples"] == 500
    rmse = table[(table["level"] == "mean") & (table["metric"] == "rmse")].iloc[0]
    assert rmse["significant"] and rmse["difference"] < 0
    # the scores' own intervals hold their point values
    rows = intervals[intervals["level"] == "mean"]
    assert ((rows["low"] <= rows["score"]) & (rows["score"] <= rows["high"])).all()
    assert set(intervals["method"]) == {"pixel", "latent-none"}
    difference, _, high = paired_difference(
        daily_table(errors), "physical", "coarsen", 2.0, "crps", "latent-none", "pixel",
        days="all", samples=500,
    )  # fmt: skip
    assert difference == pytest.approx(mean["difference"]) and high < 0


@pytest.mark.parametrize("days", [40, 365])
def test_identical_methods_differ_at_the_nominal_rate_only(days):
    """Two methods whose errors have the same distribution: over 200 seeds, a 95 % interval of
    their difference excludes zero about 5 % of the time, the days being correlated (AR(1),
    0.6), over 40 days or a year (365, the paper)."""
    flagged = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        shared = [ar1(days, rng) for _ in range(2)]
        errors = {m: [1.0 + s + ar1(days, rng) for s in shared] for m in ("pixel", "oi")}
        table, _ = significance(daily_table(errors), samples=300, seed=seed, days=("all",))
        mean = table[(table["level"] == "mean") & (table["metric"] == "crps")].iloc[0]
        flagged += bool(mean["significant"])
    print(f"{days} days: identical methods flagged in {flagged} of 200 seeds")
    assert 2 <= flagged <= 20  # 5 % of 200 is 10 (a 95 % range of the count: 4-17)
