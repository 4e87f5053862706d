"""The sampler-choice rule of studies/steps.py (slams.studies.sampler_choice): means over
seeds, paired shares of the best, and CSVs written before the seed column existed."""

import numpy as np
import pandas as pd
import pytest

from slams.studies import sampler_choice as choice


def _rows(crps_by_seed: dict[tuple[int, int], list[float]]) -> pd.DataFrame:
    """Per-seed rows of ddim samplers (steps, corrections) -> CRPS at seeds 0, 1, ... in one
    cell, with spread/skill 1 and RMSE twice the CRPS."""
    rows = []
    for (n, corrections), values in crps_by_seed.items():
        for seed, crps in enumerate(values):
            rows.append({"method": "pixel", "case": "ideal", "solver": "ddim",
                         "corrections": corrections, "min_sigma": 0.0, "guidance": "sda",
                         "tau_reference_steps": 16, "steps": n, "seed": seed,
                         "calls": n * (1 + corrections), "rmse": 2 * crps, "crps": crps,
                         "spread_skill": 1.0, "seconds": float(n)})  # fmt: skip
    return pd.DataFrame(rows)


def test_means_over_seeds_with_the_paired_noise_of_the_share_of_the_best(capsys):
    # 32 + 1 is the best on average; 16 + 0 is 1 % and 5 % worse at the same seeds, so its
    # share of the best varies far less from seed to seed than its CRPS (1.01 against 1.26)
    frame = choice.scored(_rows({(32, 1): [1.0, 1.2], (16, 0): [1.01, 1.26]}))
    by = frame.set_index("steps")
    assert (by.seeds == 2).all()
    assert by.loc[16, "crps"] == pytest.approx(1.135)
    assert by.loc[16, "rmse"] == pytest.approx(2.27)
    assert by.loc[16, "crps_share_of_best"] == pytest.approx(1.135 / 1.1)
    assert by.loc[16, "crps_sd"] == pytest.approx(np.std([1.01, 1.26], ddof=1))
    assert by.loc[16, "paired_share_sd"] == pytest.approx(np.std([1.01, 1.05], ddof=1))
    assert by.loc[32, "paired_share_sd"] == pytest.approx(0.0)
    assert by.loc[32, "good"] and not by.loc[16, "good"]  # 3.2 % off the best on average
    choice.choose(frame)
    out = capsys.readouterr().out
    assert "Means over 2 seeds" in out and "median sd 0.028, largest 0.028" in out
    assert "- pixel, ideal: ddim 32 + 1 (sda, τ × 16 / steps): 64 calls" in out


def test_rows_without_a_seed_column_are_the_runs_seed():
    old = _rows({(16, 0): [1.0], (32, 0): [0.99]}).drop(columns="seed")
    assert (choice.with_seed(old, 3).seed == 3).all()
    # nor a correction grid column (older still): corrections after every step
    assert (choice.with_seed(old).grid_steps == 0).all()
    recent = _rows({(16, 0): [1.0, 1.1], (32, 0): [0.99, 1.0]}).assign(grid_steps=0)
    new = pd.concat([choice.with_seed(old), choice.with_seed(recent)])
    # the old rows are seed 0: the same measurement as the new rows' seed 0, kept once
    merged = new.drop_duplicates(["method", "case", *choice.SAMPLER, "steps", "seed"])
    frame = choice.scored(merged)
    assert list(frame.seeds) == [2, 2]
    assert frame.set_index("steps").loc[32, "crps"] == pytest.approx(0.995)


def test_a_single_seed_has_no_noise_estimate(capsys):
    frame = choice.scored(_rows({(16, 0): [1.0], (32, 0): [0.995]}))
    assert frame.paired_share_sd.isna().all() and frame.good.all()
    choice.choose(frame)
    out = capsys.readouterr().out
    assert "Means over" not in out and "- pixel, ideal: ddim 16 + 0 (sda): 16 calls" in out


def test_the_fallback_takes_the_sampler_nearest_the_spread_window_within_two_percent(capsys):
    """No sampler meets the window: among those within 2 % of the best, the one nearest the
    window (then the fewest calls); one 3 % off the best is not considered however well spread."""
    table = pd.DataFrame({
        "steps": [16, 32, 64, 8], "calls": [16, 32, 64, 8],
        "worst": [1.00, 1.015, 1.01, 1.03],
        "ss_low": [0.72, 0.78, 0.781, 0.95], "ss_high": [0.9, 0.9, 0.9, 1.0],
    })  # fmt: skip
    # 32 and 64 are both 0.02 outside the window (as printed): the fewer calls wins
    assert choice.fallback(table).steps == 32
    assert choice.fallback(table.assign(worst=1.05)).steps == 16  # none within 2 %: the nearest
    frame = _rows({(16, 0): [1.0], (32, 1): [1.01]})
    frame.loc[frame.steps == 16, "spread_skill"] = 0.7
    frame.loc[frame.steps == 32, "spread_skill"] = 0.75
    choice.choose(choice.scored(frame))
    out = capsys.readouterr().out
    assert (
        "- pixel: none in the spread/skill window; the fallback, within 2 % and nearest the "
        "window, is ddim 32 + 1 (sda, τ × 16 / steps) (64 calls, worst 1.010" in out
    )


def _scales(rows):
    return pd.DataFrame(rows, columns=["method", "case", "eps_scale", "crps", "spread_skill"])


def test_the_eps_scale_rule_takes_the_best_crps_of_the_scales_calibrated_everywhere():
    frame = _scales([
        ("a", "ideal", 1.0, 1.00, 0.90), ("a", "coarse", 1.0, 2.00, 0.70),
        ("a", "ideal", 1.02, 1.00, 0.95), ("a", "coarse", 1.02, 1.98, 0.85),
        ("a", "ideal", 1.04, 1.01, 1.00), ("a", "coarse", 1.04, 2.01, 1.00),
        # b: the widest is calibrated everywhere but 3 % behind in one case; none qualifies,
        # so the fallback: within 2 % and nearest the window
        ("b", "ideal", 1.0, 1.00, 0.75), ("b", "coarse", 1.0, 2.00, 0.60),
        ("b", "ideal", 1.04, 1.00, 0.78), ("b", "coarse", 1.04, 2.02, 0.70),
        ("b", "ideal", 1.08, 1.03, 0.90), ("b", "coarse", 1.08, 2.03, 0.85),
    ])  # fmt: skip
    table = choice.choose_eps_scale(frame)
    chosen = table[table.chosen].set_index("method").eps_scale
    # a: 1.02 and 1.04 qualify in both cases; 1.02 has the lower worst share (1.0 vs 1.015)
    assert chosen["a"] == 1.02
    assert chosen["b"] == 1.04
    row = table.set_index(["method", "eps_scale"]).loc[("b", 1.08)]
    assert row.good == 1 and row.worst == pytest.approx(1.03)  # the coarse case qualifies
