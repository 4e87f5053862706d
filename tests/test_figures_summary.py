"""Tests of slams.figures.summary: what the figures show and the markdown summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slams.figures.summary import (
    case_figure_label,
    case_figure_stem,
    case_files,
    case_level,
    case_map_methods,
    case_map_missing,
    map_methods,
    spread_error_rows,
    spread_map_methods,
    summary_markdown,
    write_config,
)

PAPER_LEVELS = [10, 50, 100, 200, 300, 500, 700, 850, 925, 1000]


def test_case_figure_stem_numbers_the_paper_cases():
    assert [case_figure_stem(c) for c in ("ideal", "coarse", "noisy", "sparse")] == [
        "fig3-ideal",
        "fig4-coarse",
        "fig5-noisy",
        "fig6-sparse",
    ]
    assert case_figure_stem("storm") == "case-storm"


def test_case_level_is_the_papers_or_the_nearest_configured():
    assert case_level("ideal", PAPER_LEVELS) == 200.0
    assert case_level("sparse", PAPER_LEVELS) == 1000.0
    assert case_level("coarse", [50, 500, 850]) == 50.0  # |200-50| < |200-500|
    assert case_level("noisy", [500, 850]) == 850.0
    assert case_level("ideal", [100, 300]) == 100.0  # a tie goes to the lower pressure
    assert case_level("storm", PAPER_LEVELS) == 500.0  # not a paper case: mid-troposphere
    with pytest.raises(ValueError, match="at least one"):
        case_level("ideal", [])


def test_map_methods_prefer_the_most_modalities():
    every = ["pixel", "latent-none", "latent-insitu", "latent-exsitu", "latent-both", "oi"]
    assert map_methods(every) == {"pixel": "pixel", "latent": "latent-both"}
    assert map_methods(["latent-none", "latent-insitu"]) == {
        "pixel": None,
        "latent": "latent-insitu",
    }
    assert map_methods(["climatology"]) == {"pixel": None, "latent": None}
    assert spread_map_methods([*every, "climatology"]) == ["pixel", "latent-both", "oi"]
    assert spread_map_methods(["climatology"]) == []


def scores_table(protocol: str = "physical", shift: float = 0.0) -> pd.DataFrame:
    """Two levels; pixel best in RMSE, latent-both best calibrated, climatology lacks spread;
    ``shift`` is added to latent-both's scores."""
    rows = []
    values = {
        "pixel": {"rmse": (1.0, 2.0), "crps": (0.5, 0.7), "spread_skill": (0.5, 0.7)},
        "latent-both": {"rmse": (2.0, 3.0), "crps": (0.6, 0.8), "spread_skill": (1.1, 0.95)},
        "climatology": {"rmse": (3.0, 3.0), "crps": (2.0, 2.0)},
    }
    for method, metrics in values.items():
        for metric, per_level in metrics.items():
            for level, score in zip((200.0, 1000.0), per_level, strict=True):
                score += shift * (method == "latent-both")
                for axis, value in (("coarsen", 4.0), ("gap", 16.0)):
                    rows.append([protocol, method, axis, value, level, "observed", metric, score])
                    rows.append([protocol, method, axis, value, level, "all", metric, score + 10])
    columns = ["protocol", "method", "axis", "value", "level", "days", "metric", "score"]
    return pd.DataFrame(rows, columns=columns)


def daily_table(crps: dict[str, float], noise: float, days: int = 30) -> pd.DataFrame:
    """Daily MSE and CRPS of the coarsen-4 cell: each method's level-mean CRPS around the given
    value, with day-to-day noise shared by all methods (the weather) and its own."""
    rng = np.random.default_rng(0)
    rows = []
    shared = rng.normal(0, 0.3, size=days)
    for method, base in crps.items():
        own = rng.normal(0, noise, size=days)
        for level in (200.0, 1000.0):
            for day in range(days):
                value = max(base + shared[day] + own[day], 0.01)
                for metric, score in (("crps", value), ("mse", value**2)):
                    rows.append(["physical", method, "coarsen", 4.0, level, day, True, metric,
                                 score])  # fmt: skip
    columns = ["protocol", "method", "axis", "value", "level", "time", "observed", "metric",
               "score"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_summary_markdown_bold_only_a_significant_winner():
    clear = daily_table({"pixel": 1.5, "latent-both": 2.5, "climatology": 3.0}, noise=0.05)
    text = summary_markdown(scores_table(), {"ideal": ("coarsen", "4")}, name="demo", daily=clear)
    assert text.startswith("# Summary of experiment demo")
    lines = text.splitlines()
    header = "| case | setting | metric | pixel | latent-both | climatology | best |"
    assert header in lines
    # means over the two levels; pixel is clearly best day after day: bold
    assert "| ideal | coarsen 4 | RMSE (K) | **1.500** | 2.500 | 3.000 | pixel |" in lines
    # spread/skill and Wasserstein are not tested: no winner
    assert "| ideal | coarsen 4 | spread/skill | 0.600 | 1.025 | – | – |" in lines
    # no Wasserstein scores in the table: no such row, and "all" days were not used
    assert not any(line.startswith("| ideal") and "Wasserstein" in line for line in lines)
    assert "11.500" not in text
    # every setting follows, gap included
    assert "| gap | 16 | rmse | 1.500 | 2.500 | 3.000 |" in lines
    # one protocol only: a section for it, no comparison
    assert "## Physical protocol" in lines and "## Paper protocol" not in lines
    assert "## The protocols compared" not in lines
    # close methods with noisy days: no bold, the tie is named
    tie = daily_table({"pixel": 1.5, "latent-both": 1.52, "climatology": 3.0}, noise=0.5)
    lines = summary_markdown(scores_table(), {"ideal": ("coarsen", "4")}, daily=tie).splitlines()
    assert "| ideal | coarsen 4 | RMSE (K) | 1.500 | 2.500 | 3.000 | pixel ≈ latent-both |" in lines
    # without daily scores nothing is tested, nothing is bold
    untested = summary_markdown(scores_table(), {"ideal": ("coarsen", "4")}).splitlines()
    assert not any("**" in line for line in untested if line.startswith("| ideal"))


def test_summary_markdown_compares_the_protocols():
    both = pd.concat([scores_table("physical", shift=0.5), scores_table("paper")])
    lines = summary_markdown(both, {"ideal": ("coarsen", "4")}).splitlines()
    assert lines.index("## Physical protocol") < lines.index("## Paper protocol")
    assert "## The protocols compared" in lines
    # latent-both under the paper protocol and the physical one, and the difference
    assert "| coarsen | 4 | latent-both | 2.500 | 3.000 | +0.500 |" in lines
    assert not any(
        "| pixel |" in line for line in lines[lines.index("## The protocols compared") :]
    )


def test_summary_markdown_without_scores_for_days():
    with pytest.raises(ValueError, match="no scores"):
        summary_markdown(scores_table(), {}, days="weekends")


def test_figure_rule_inputs_from_the_config():
    run = "results/x"
    every = ["pixel", "pixel-both", "latent-none", "latent-both", "oi", "climatology"]
    assert case_files(every, ("coarsen", "4"), run, "paper") == [
        "results/x/analysis/paper/pixel/coarsen-4.nc",
        "results/x/analysis/paper/latent-both/coarsen-4.nc",
    ]
    assert case_map_missing(every) == {}
    # neither pixel nor latent: the first method's file, for the truth and the observation
    assert case_map_methods(["oi", "climatology"]) == ["oi"]
    # pixel-both is defined under the physical protocol only
    assert case_map_methods(["pixel-both", "oi"], "paper") == ["oi"]
    assert set(case_map_missing(["oi"])) == {"pixel analysis", "latent analysis"}
    assert case_figure_label("fig5") == "Figure 5" and case_figure_label("case") == "Case"
    rows = spread_error_rows(every, {"noisy": ("noise", "4")}, [50, 500, 850], run, "physical")
    assert rows == [
        [
            "noisy",
            850.0,
            {
                "pixel": "results/x/analysis/physical/pixel/noise-4.nc",
                "latent-both": "results/x/analysis/physical/latent-both/noise-4.nc",
                "oi": "results/x/analysis/physical/oi/noise-4.nc",
            },
        ]
    ]


def test_write_config_names_its_sources(tmp_path):
    yaml = pytest.importorskip("yaml")
    config = {"name": "demo", "assimilation": {"cases": {"ideal": "coarsen-2"}, "members": 4}}
    out = tmp_path / "config.resolved.yaml"
    write_config(config, ["config.yaml", "presets/demo.yaml"], out)
    text = out.read_text()
    assert text.splitlines()[2:4] == ["#   config.yaml", "#   presets/demo.yaml"]
    assert yaml.safe_load(text) == config
