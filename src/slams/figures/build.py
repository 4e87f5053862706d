"""Every figure of the workflow from its files: what the ``figures`` scripts call.

Reads the analysis files, ``scores.csv``, ``rank-histograms.csv`` and the loss logs, picks
what each figure shows (day, level, methods; :mod:`slams.figures.summary`) and draws it with
:mod:`slams.figures.draw`. Where the config lacks what a figure needs (e.g. no latent method),
the figure says so instead of failing, so every declared output exists and the report explains
the gap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from slams import metrics
from slams.figures import draw
from slams.figures.summary import case_level, map_methods, summary_markdown

log = logging.getLogger(__name__)

# Paper Fig. 7: pixel against latent unimodal against latent multimodal.
FIG7_METHODS = ("pixel", "latent-none", "latent-both")


def choose_day(observed: np.ndarray) -> int:
    """Index of the map day: the middle observed day (the middle day if none is observed)."""
    days = np.flatnonzero(np.asarray(observed).astype(bool))
    if days.size == 0:
        return len(observed) // 2
    return int(days[(days.size - 1) // 2])


def case_map_figure(
    analysis_paths: Mapping[str, str | Path],
    out_path: str | Path,
    case: str,
    figure_label: str,
    level: float | None = None,
    show: Sequence[str] | None = None,
    missing: Mapping[str, str] | None = None,
) -> list[Path]:
    """Figure 3-6 of one named case from its analysis files.

    Args:
        analysis_paths: method -> analysis file of the case (same setting); truth and the
            pixel-space observation come from the first file that has them.
        out_path: PNG path (PDF beside it).
        case: case name (``ideal``, ``coarse``, ...).
        figure_label: e.g. ``Figure 3``.
        level: pressure level (hPa); default :func:`slams.figures.summary.case_level` of ``case``.
        show: methods whose ensemble mean is drawn, in order; default every method given.
        missing: panel -> reason it is absent, for the notes (e.g. a method not configured).

    The day is :func:`choose_day` of the observed days; the title names case, setting,
    level and date; the notes panel says what is shown.
    """
    if not analysis_paths:
        raise ValueError(f"case {case!r}: no analysis file to read the truth from")
    show = list(analysis_paths) if show is None else list(show)
    datasets = {m: xr.open_dataset(p) for m, p in analysis_paths.items()}
    try:
        first = next(iter(datasets.values()))
        if level is None:
            level = case_level(case, first["level"].values)
        observed = first["observed"].values.astype(bool)
        day = choose_day(observed)
        date = pd.Timestamp(first["time"].values[day]).strftime("%Y-%m-%d")

        def pick(ds: xr.Dataset, name: str) -> xr.DataArray:
            return ds[name].isel(time=day).sel(level=level).load()

        truth = pick(first, "truth")
        observation = next(
            (pick(ds, "observation") for ds in datasets.values() if "observation" in ds), None
        )
        analyses, members, observes = {}, {}, {}
        for method in show:
            ds = datasets[method]
            if not np.allclose(pick(ds, "truth"), truth, equal_nan=True):
                raise ValueError(
                    f"case {case!r}: {analysis_paths[method]} has another truth than "
                    f"{next(iter(analysis_paths.values()))}: not the same setting and days"
                )
            analyses[draw.method_title(method)] = pick(ds, "analysis")
            members[method] = ds.sizes.get(metrics.MEMBER, 1)
            observes[method] = ds.attrs.get("observations", "?")
        attrs = dict(first.attrs)
    finally:
        for ds in datasets.values():
            ds.close()

    setting = draw.setting_label(attrs["axis"], attrs["value"])
    title = f"{figure_label}: {case} case ({setting}), t @ {level:g} hPa, {date}"
    notes = [
        f"Day shown: {date} ({'observed' if observed[day] else 'unobserved'}),",
        f"the middle of {int(observed.sum())} observed days of {observed.size}.",
        f"Observation: coarsen {attrs.get('coarsen', '?')}, gap {attrs.get('gap', '?')},",
        f"noise variance {attrs.get('noise_variance', '?')} (standardised units).",
    ]
    if "protocol" in attrs:
        notes.append(f"Protocol: {attrs['protocol']}.")
    if members:
        notes.append("Ensemble means of (observing)")
        notes.extend(
            f"  {m}: {n} member{'s' * (n != 1)} ({observes[m]})" for m, n in members.items()
        )
    if observation is None or not np.isfinite(observation.values).any():
        notes.append("No observation on this day.")
    for panel, reason in (missing or {}).items():
        notes.append(f"No {panel} panel: {reason}.")
    return draw.plot_case_maps(truth, observation, analyses, out_path, title, notes)


def spread_error_figure(
    cases: Sequence[tuple[str, float, Mapping[str, str | Path]]],
    out_path: str | Path,
    days: str = "observed",
) -> list[Path]:
    """Maps of ensemble spread beside RMSE: a row per case, a column pair per method.

    Args:
        cases: (case name, level in hPa, {method: analysis file}) per row; files with fewer
            than 2 members are skipped (no spread).
        out_path: PNG path (PDF beside it).
        days: ``observed`` (the days with an observation) or ``all``.

    Per grid point, over the days: spread = sqrt((M+1)/M) sqrt(mean_t s^2)
    (:func:`slams.metrics.spread`) and RMSE = sqrt(mean_t (xbar - truth)^2). Where nothing
    has an ensemble, the figure says so.
    """
    rows = []
    for case, level, paths in cases:
        fields, label = {}, case
        for method, path in paths.items():
            with xr.open_dataset(path) as ds:
                if ds.sizes.get(metrics.MEMBER, 1) < 2:
                    continue
                observed = ds["observed"].values.astype(bool)
                if days == "observed" and observed.any():
                    ds = ds.isel(time=np.flatnonzero(observed))
                truth = ds["truth"].sel(level=level).load()
                analysis = ds["analysis"].sel(level=level).load()
                short = draw.SHORT_AXIS_LABELS.get(ds.attrs["axis"], ds.attrs["axis"])
                label = f"{case}: {short} = {float(ds.attrs['value']):g}\nt @ {level:g} hPa"
            fields[method] = (
                metrics.spread(analysis, dims=("time",)),
                metrics.rmse(truth, analysis, dims=("time",)),
            )
        if fields:
            rows.append((label, fields))
    title = f"Ensemble spread beside RMSE of the ensemble mean, {days} days"
    if not rows:
        return draw.plot_placeholder(
            out_path, title, "No ensemble method (pixel, latent-*, oi) in the config's methods."
        )
    return draw.plot_spread_error_maps(rows, out_path, title)


def _fig7_methods(present: Sequence[str]) -> list[str]:
    """Pixel, latent unimodal and the most multimodal latent set present (paper Fig. 7)."""
    chosen = [m for m in FIG7_METHODS if m in present]
    if "latent-both" not in present:
        latent = map_methods(present)["latent"]
        if latent is not None and latent not in chosen:
            chosen.append(latent)
    return chosen


def _draw(outputs: Mapping[str, str | Path], key: str, make, title: str, reason: str) -> None:
    """Draw figure ``key`` with ``make(path)``, or a placeholder saying ``reason`` if ``make``
    is None (the config lacks what the figure needs); keys not in ``outputs`` are skipped."""
    if key not in outputs:
        return
    if make is None:
        log.warning("%s: %s", key, reason)
        draw.plot_placeholder(outputs[key], title, reason)
    else:
        make(outputs[key])


def protocol_figures(
    scores_csv: str | Path,
    rank_histograms_csv: str | Path,
    outputs: Mapping[str, str | Path],
    cases: Mapping[str, tuple[str, str | float]],
    protocol: str,
    days: str = "observed",
    intervals_csv: str | Path | None = None,
) -> None:
    """The figures of one protocol drawn from the tables, each to ``outputs[key]``.

    Keys: ``fig7`` (Wasserstein against degradation: pixel, latent-none, latent-both),
    ``fig8`` (modality ablation), ``rmse``, ``crps`` (with their 95 % intervals from
    ``intervals_csv``), ``spread_skill`` (against degradation, every method),
    ``rank_histograms`` (the named cases).
    """
    scores = pd.read_csv(scores_csv)
    scores = scores[scores["protocol"] == protocol]
    intervals = None
    if intervals_csv is not None:
        intervals = pd.read_csv(intervals_csv)
        intervals = intervals[intervals["protocol"] == protocol]
    histograms = pd.read_csv(rank_histograms_csv)
    histograms = histograms[histograms["protocol"] == protocol]
    if scores.empty:
        raise ValueError(f"{scores_csv} has no scores of the {protocol} protocol")
    present = list(scores["method"].unique())
    metrics_present = set(scores["metric"])
    suffix = f", {protocol} protocol"

    fig7 = _fig7_methods(present)
    _draw(
        outputs,
        "fig7",
        (lambda out: draw.plot_ablation(scores, out, "wasserstein", days, fig7,
                                         title=f"Figure 7{suffix}"))
        if fig7
        else None,
        "Figure 7",
        "No diffusion method (pixel, latent-*) in the config's methods.",
    )  # fmt: skip
    has_latent = any(m.startswith("latent-") for m in present)
    _draw(
        outputs,
        "fig8",
        (lambda out: draw.plot_modality_ablation(scores, out, "wasserstein", days,
                                                  title=f"Figure 8{suffix}"))
        if has_latent
        else None,
        "Figure 8",
        "No latent method in the config's methods: no modality ablation.",
    )  # fmt: skip
    for key, metric, reference in (
        ("rmse", "rmse", None),
        ("crps", "crps", None),
        ("spread_skill", "spread_skill", 1.0),
    ):
        label = draw.METRIC_LABELS[metric].split(" (")[0]
        _draw(
            outputs,
            key,
            (
                lambda out, metric=metric, reference=reference, label=label: draw.plot_ablation(
                    scores,
                    out,
                    metric,
                    days,
                    reference=reference,
                    title=f"{label} against degradation, {days} days{suffix}",
                    intervals=intervals,
                )
            )
            if metric in metrics_present
            else None,
            label,
            f"No {metric} scores: no method with an ensemble of 2 or more members.",
        )
    settings = {
        case: (axis, float(value))
        for case, (axis, value) in cases.items()
        if not histograms.empty
        and ((histograms["axis"] == axis) & np.isclose(histograms["value"], float(value))).any()
    }
    _draw(
        outputs,
        "rank_histograms",
        (lambda out: draw.plot_rank_histograms(histograms, settings, out, days))
        if settings
        else None,
        "Rank histograms",
        "No ensemble analysis of the named cases (2 or more members).",
    )


def overview_figures(
    scores_csv: str | Path,
    loss_csvs: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
    cases: Mapping[str, tuple[str, str | float]],
    name: str = "",
    days: str = "observed",
    daily_csv: str | Path | None = None,
    significance_csv: str | Path | None = None,
    max_epochs: Mapping[str, int] | None = None,
) -> None:
    """The figures across protocols, each to ``outputs[key]``: ``protocols`` (pixel and the
    latent methods under each protocol), ``curves`` (training losses; ``max_epochs`` per model
    marks the runs that stopped early), ``summary`` (markdown, its winners tested on
    ``daily_csv``, its intervals from ``significance_csv``)."""
    scores = pd.read_csv(scores_csv)
    protocols = list(dict.fromkeys(scores["protocol"]))
    _draw(
        outputs,
        "protocols",
        (lambda out: draw.plot_protocols(scores, out, days=days)) if len(protocols) > 1 else None,
        "Protocols",
        f"Only the {protocols[0]} protocol was run: nothing to compare (assimilation.protocols).",
    )
    _draw(
        outputs,
        "curves",
        (lambda out: draw.plot_training_curves(loss_csvs, out, max_epochs)) if loss_csvs else None,
        "Training curves",
        "No network trained: the config runs neither pixel nor latent methods.",
    )
    if "summary" in outputs:
        daily = pd.read_csv(daily_csv) if daily_csv is not None else None
        significance = pd.read_csv(significance_csv) if significance_csv is not None else None
        Path(outputs["summary"]).write_text(
            summary_markdown(scores, cases, name, days, daily, significance)
        )
