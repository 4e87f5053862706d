"""What the figures show and the markdown summary: no plotting here, so the Snakefile can
import it cheaply.

The paper's figures 3-6 show named cells of the ablation grid (``assimilation.cases``):
the ideal case and the realistic coarse, noisy and sparse cases, each at one pressure level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slams.methods import METHODS
from slams.paths import analysis_path

# Case name -> (paper figure number, pressure level in hPa it shows).
PAPER_CASES = {
    "ideal": (3, 200.0),
    "coarse": (4, 200.0),
    "noisy": (5, 1000.0),
    "sparse": (6, 1000.0),
}
# Level of a case the paper does not name: the middle troposphere.
DEFAULT_CASE_LEVEL = 500.0
# Latent method of the map figures, most modalities first (the paper's SLAMS is latent-both).
LATENT_PREFERENCE = ("latent-both", "latent-exsitu", "latent-insitu", "latent-none")
# Methods with an ensemble whose spread is drawn beside its error.
ENSEMBLE_MAP_METHODS = ("pixel", *LATENT_PREFERENCE, "oi")

METHOD_ORDER = tuple(METHODS)  # the table's order
AXIS_ORDER = ("coarsen", "noise", "gap")
AXIS_NAMES = {"coarsen": "coarsening factor r", "noise": "noise variance σ²", "gap": "gap g"}
# Headline metrics of the summary and how "best" is judged.
SUMMARY_METRICS = {
    "rmse": ("RMSE (K)", "min"),
    "crps": ("CRPS (K)", "min"),
    "wasserstein": ("Wasserstein (K)", "min"),
    "spread_skill": ("spread/skill", "one"),
}


def case_figure_stem(case: str) -> str:
    """File stem of a case's map figure: ``fig3-ideal`` (paper cases) or ``case-<name>``."""
    if case in PAPER_CASES:
        return f"fig{PAPER_CASES[case][0]}-{case}"
    return f"case-{case}"


def case_level(case: str, levels: Sequence[float]) -> float:
    """The configured level closest to the one the paper shows for ``case`` (ties: lower hPa)."""
    levels = np.asarray(levels, dtype=float)
    if levels.size == 0:
        raise ValueError("case_level needs at least one pressure level")
    wanted = PAPER_CASES.get(case, (None, DEFAULT_CASE_LEVEL))[1]
    order = np.lexsort((levels, np.abs(levels - wanted)))
    return float(levels[order[0]])


def under(methods: Sequence[str], protocol: str | None) -> list[str]:
    """The methods of ``methods`` defined under ``protocol`` (all of them for ``None``)."""
    return [m for m in methods if protocol is None or protocol in METHODS[m].protocols]


def map_methods(methods: Sequence[str], protocol: str | None = None) -> dict[str, str | None]:
    """Methods of the map figures among ``methods`` (under ``protocol``):
    ``{"pixel": ..., "latent": ...}``.

    ``latent`` is the configured latent method with the most modalities
    (:data:`LATENT_PREFERENCE`); a missing one is ``None`` (its panels are left out).
    """
    methods = under(methods, protocol)
    latent = next((m for m in LATENT_PREFERENCE if m in methods), None)
    return {"pixel": "pixel" if "pixel" in methods else None, "latent": latent}


def spread_map_methods(methods: Sequence[str], protocol: str | None = None) -> list[str]:
    """Methods of the spread/error maps: pixel, the preferred latent method and OI, if run."""
    chosen = map_methods(methods, protocol)
    candidates = [chosen["pixel"], chosen["latent"], "oi" if "oi" in methods else None]
    return [m for m in candidates if m is not None]


def ordered_methods(present: Sequence[str]) -> list[str]:
    """``present`` in the canonical method order, unknown names last (sorted)."""
    present = set(present)
    known = [m for m in METHOD_ORDER if m in present]
    return known + sorted(present - set(METHOD_ORDER))


def _level_means(scores: pd.DataFrame, days: str) -> pd.Series:
    table = scores[scores["days"] == days] if "days" in scores.columns else scores
    return table.groupby(["axis", "value", "metric", "method"])["score"].mean()


def _format_row(values: pd.Series, methods: list[str], winner: str) -> list[str]:
    """Cells of one table row, the ``winner``'s value (if any) in bold."""
    cells = []
    for method in methods:
        value = values.get(method, np.nan)
        if pd.isna(value):
            cells.append("–")
        elif method == winner:
            cells.append(f"**{value:.3f}**")
        else:
            cells.append(f"{value:.3f}")
    return cells


def winner(
    values: pd.Series, daily: pd.DataFrame | None, protocol: str, axis: str, value: float,
    metric: str, days: str,
) -> str:  # fmt: skip
    """The best method of a row, if it is significantly best, else a note.

    The best (lowest) level-mean RMSE or CRPS wins only where the 95 % interval of its
    difference from the runner-up, a paired moving-block bootstrap over days
    (:func:`slams.significance.paired_difference`), excludes zero; otherwise the row says
    ``<best> ≈ <runner-up>``. Metrics without daily values (Wasserstein, spread/skill) are
    not tested and name no winner.
    """
    from slams.significance import DAILY, paired_difference

    finite = values.dropna().sort_values()
    if metric not in DAILY or daily is None or len(finite) < 2:
        return ""
    best, runner_up = finite.index[0], finite.index[1]
    _, low, _ = paired_difference(daily, protocol, axis, value, metric, runner_up, best, days)
    return best if low > 0 else f"{best} ≈ {runner_up}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    aligns = ["---"] * numeric_from + ["---:"] * (len(header) - numeric_from)
    lines.append("|" + "|".join(aligns) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def summary_table(
    scores: pd.DataFrame,
    metrics: Sequence[str] = ("rmse", "wasserstein"),
    days: str = "observed",
) -> str:
    """Markdown table of scores averaged over levels, by ablation setting and method.

    Rows are (axis, value, metric), columns the methods (canonical order); each cell is
    the mean of ``score`` over levels (and seeds) with 3 decimals, "–" when missing.
    """
    means = _level_means(scores[scores["metric"].isin(metrics)], days)
    if means.empty:
        raise ValueError(f"no scores for metrics {list(metrics)} and days={days!r}")
    wide = means.unstack("method")
    methods = ordered_methods(list(wide.columns))
    axis_rank = {a: i for i, a in enumerate(AXIS_ORDER)}
    metric_rank = {m: i for i, m in enumerate(metrics)}
    keys = sorted(
        wide.index,
        key=lambda k: (axis_rank.get(k[0], len(axis_rank)), str(k[0]), k[1], metric_rank[k[2]]),
    )
    rows = []
    for key in keys:
        values = wide.loc[key]
        cells = ["–" if pd.isna(values.get(m)) else f"{values[m]:.3f}" for m in methods]
        rows.append([str(key[0]), f"{key[1]:g}", str(key[2]), *cells])
    return "\n".join(_table(["axis", "value", "metric", *methods], rows, 3)) + "\n"


PROTOCOL_NOTES = {
    "physical": (
        "every method observes the same temperature A(T) + noise, and the methods that use "
        "them precipitation on the gauges and OLR, in physical space; nothing of the truth "
        "reaches an analysis except through these observations. The protocol a user with real "
        "observations has, and the one our claims rest on."
    ),
    "paper": (
        "as the paper: pixel-space methods observe A(T) + noise, the latent methods "
        "A(E(true stack)) + noise, the encoded truth (temperature at full resolution, and the "
        "true precipitation and OLR), with noise in latent units. Forming it needs the truth, "
        "so no latent method can assimilate a real observation this way; kept to reproduce the "
        "paper's figures."
    ),
}


def _case_rows(means: pd.Series, cases, methods, daily, protocol, days) -> list[list[str]]:
    rows = []
    for case, (axis, value) in cases.items():
        for metric, (label, _) in SUMMARY_METRICS.items():
            key = (axis, float(value), metric)
            if key not in means.index.droplevel("method"):
                continue
            best = winner(means.loc[key], daily, protocol, axis, float(value), metric, days)
            cells = _format_row(means.loc[key], methods, best)
            rows.append([case, f"{axis} {float(value):g}", label, *cells, best or "–"])
    return rows


def significance_rows(significance: pd.DataFrame, cases, protocol: str, days: str) -> list[list]:
    """Rows of the named cases' level-mean differences against the references, with their
    95 % intervals (``significance.csv``)."""
    table = significance[(significance["protocol"] == protocol) & (significance["days"] == days)
                         & (significance["level"].astype(str) == "mean")]  # fmt: skip
    rows = []
    for case, (axis, value) in cases.items():
        cell = table[(table["axis"] == axis) & np.isclose(table["value"], float(value))]
        for r in cell.itertuples():
            mark = " *" if r.significant else ""
            interval = f"[{r.low:+.3f}, {r.high:+.3f}]{mark}"
            comparison = f"{r.method} − {r.reference}"
            rows.append([case, f"{axis} {float(value):g}", r.metric, comparison,
                         f"{r.difference:+.3f}", interval])  # fmt: skip
    return rows


def protocol_comparison(scores: pd.DataFrame, metric: str = "rmse", days: str = "observed"):
    """Level-mean ``metric`` of every method run under both protocols, side by side:
    ``(axis, value, method) -> paper, physical, physical - paper``."""
    table = scores[(scores["metric"] == metric) & (scores["days"] == days)]
    means = table.groupby(["protocol", "axis", "value", "method"])["score"].mean()
    wide = means.unstack("protocol")
    if not {"paper", "physical"} <= set(wide.columns):
        return pd.DataFrame(columns=["paper", "physical", "change"])
    wide = wide[["paper", "physical"]].dropna()
    wide["change"] = wide["physical"] - wide["paper"]
    return wide


def summary_markdown(
    scores: pd.DataFrame,
    cases: Mapping[str, tuple[str, str | float]],
    name: str = "",
    days: str = "observed",
    daily: pd.DataFrame | None = None,
    significance: pd.DataFrame | None = None,
) -> str:
    """The headline numbers as markdown: per protocol the named cases, then every setting;
    then the latent methods under both protocols.

    Args:
        scores: the tidy ``scores.csv`` table (with its ``protocol`` column).
        cases: case name -> (axis, value), e.g. ``{"ideal": ("coarsen", "4")}``.
        name: experiment name for the title.
        days: ``observed`` or ``all``.
        daily: ``daily-scores.csv``, to test the best method of a row (see :func:`winner`).
        significance: ``significance.csv``, whose named-case rows are listed per protocol.

    Every number is a mean over the pressure levels of the per-level score; the best method
    of an RMSE or CRPS row is in bold only where it is significantly better than the
    runner-up.
    """
    protocols = [p for p in ("physical", "paper") if p in set(scores["protocol"])]
    title = f"# Summary{f' of experiment {name}' if name else ''}"
    lines = [
        title,
        "",
        f"Scores on {days} days, averaged over the {scores['level'].nunique()} pressure levels "
        "(kelvin, except the spread/skill ratio, which is 1 for a calibrated ensemble). "
        "Bold: the best method of an RMSE or CRPS row, where the 95 % interval of its "
        "difference from the runner-up (a paired moving-block bootstrap over days) excludes "
        "zero; where it does not, the last column says `best ≈ runner-up`. Wasserstein and "
        "spread/skill are not tested. – : not defined (spread/skill of the one-member "
        "climatology) or not run.",
        "",
        "Observation protocols:",
        "",
    ]
    lines += [f"- **{p}**: {PROTOCOL_NOTES[p]}" for p in protocols]
    for protocol in protocols:
        table = scores[scores["protocol"] == protocol]
        means = _level_means(table, days)
        if means.empty:
            raise ValueError(f"no scores for days={days!r}: did the evaluation run?")
        methods = ordered_methods(list(means.index.get_level_values("method").unique()))
        lines += ["", f"## {protocol.capitalize()} protocol", "", "### The paper's cases", ""]
        rows = _case_rows(means, cases, methods, daily, protocol, days)
        if rows:
            lines.extend(_table(["case", "setting", "metric", *methods, "best"], rows, 3))
        else:
            lines.append("No scores for the named cases.")
        if significance is not None:
            rows = significance_rows(significance, cases, protocol, days)
            if rows:
                lines += ["", "### Differences on the named cases, with 95 % intervals", "",
                          "Level mean; negative: the method has the lower error; * : the "
                          "interval excludes zero.", ""]  # fmt: skip
                header = ["case", "setting", "metric", "comparison", "difference", "interval"]
                lines.extend(_table(header, rows, 4))
        lines += ["", "### Every setting", ""]
        metrics = [m for m in SUMMARY_METRICS if m in set(table["metric"])]
        lines.append(summary_table(table, metrics=metrics, days=days).rstrip("\n"))

    comparison = protocol_comparison(scores, "rmse", days)
    if not comparison.empty:
        latent = comparison.index.get_level_values("method").str.startswith("latent-")
        comparison = comparison[latent]
    if not comparison.empty:
        lines += [
            "",
            "## The protocols compared",
            "",
            "RMSE (K, level mean) of the latent methods under the paper's protocol (observing "
            "the encoded truth) and the physical one (observing the same temperature, "
            "precipitation and OLR as every other method, through the decoder). A positive "
            "change is the part of the paper protocol's score that came from its observations "
            "rather than from the method.",
            "",
        ]
        rows = [
            [axis, f"{value:g}", method, f"{r.paper:.3f}", f"{r.physical:.3f}", f"{r.change:+.3f}"]
            for (axis, value, method), r in comparison.iterrows()
        ]
        header = ["axis", "value", "method", "paper", "physical", "physical − paper"]
        lines.extend(_table(header, rows, 3))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- workflow inputs
# What the figure rules read, as plain functions of the config's methods and cases, so the rule
# file holds no logic (``snakemake --lint``) and the choices are unit-tested.


def case_map_methods(methods: Sequence[str], protocol: str | None = None) -> list[str]:
    """Analyses a case's maps read: pixel and the preferred latent method, or, where neither
    is configured, the first method (only for its truth and observation)."""
    chosen = [m for m in map_methods(methods, protocol).values() if m is not None]
    return chosen or under(methods, protocol)[:1]


def case_map_missing(methods: Sequence[str], protocol: str | None = None) -> dict[str, str]:
    """Panels a case's maps lack, and why (the figure and its caption say so)."""
    chosen = map_methods(methods, protocol)
    missing = {}
    if chosen["pixel"] is None:
        missing["pixel analysis"] = "pixel is not in assimilation.methods"
    if chosen["latent"] is None:
        missing["latent analysis"] = "no latent-* method is in assimilation.methods"
    return missing


def case_figure_label(figure: str) -> str:
    """``fig3`` -> ``Figure 3``; ``case`` (a case the paper does not name) -> ``Case``."""
    return f"Figure {figure.removeprefix('fig')}" if figure.startswith("fig") else "Case"


def case_files(
    methods: Sequence[str], setting: tuple[str, str], run: str, protocol: str
) -> list[str]:
    """Analysis files of a case's maps in the run folder ``run``; ``setting`` is the case's
    (axis, value)."""
    axis, value = setting
    return [
        analysis_path(run, protocol, m, axis, value) for m in case_map_methods(methods, protocol)
    ]


def spread_error_rows(
    methods: Sequence[str],
    cases: Mapping[str, tuple[str, str]],
    levels: Sequence[float],
    run: str,
    protocol: str,
) -> list[list]:
    """``[case, level, {method: analysis file}]`` per case for the spread/error maps of one
    protocol, in the run folder ``run``."""
    return [
        [
            case,
            case_level(case, levels),
            {
                m: analysis_path(run, protocol, m, axis, value)
                for m in spread_map_methods(methods, protocol)
            },
        ]
        for case, (axis, value) in cases.items()
    ]


def write_config(config: Mapping, configfiles: Sequence[str], path: str | Path) -> None:
    """Write the run's config (validated, defaults filled in) as YAML, naming its sources."""
    import yaml

    header = [
        "# The configuration of this run, schema defaults filled in, from these files",
        "# (--configfile overlays take precedence over the workflow's config.yaml):",
    ]
    header += [f"#   {source}" for source in configfiles]
    body = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    Path(path).write_text("\n".join(header) + "\n" + body)


def _plain(value):
    """Mappings and sequences as dicts and lists (Snakemake passes its own config types)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
