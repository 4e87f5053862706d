"""Figures from the tidy score tables (``scores.csv``, ``rank-histograms.csv``), the analysis
files and the training logs.

Lines and bars are drawn with seaborn from the tidy tables, one fixed colour and marker per
method; the maps with matplotlib, on the cell-centred lat-lon grid itself (cells from their
edges, no reprojection), longitude 0-360 °E, latitude -90-90 °N. Everything runs on the
non-interactive Agg backend, so the functions run on cluster nodes without a display. Each
figure is written as PNG and as PDF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator

from slams import metrics
from slams.figures.summary import METHOD_ORDER, ordered_methods, summary_table
from slams.grid import area_weights, cell_edges
from slams.methods import METHODS

__all__ = [
    "plot_ablation",
    "plot_case_maps",
    "plot_modality_ablation",
    "plot_placeholder",
    "plot_protocols",
    "plot_rank_histograms",
    "plot_spread_error_maps",
    "plot_training_curves",
    "setting_label",
    "summary_table",
]

DPI = 130
PANEL_WIDTH_IN = 2.2
PANEL_HEIGHT_IN = 2.0

# Rows of the ablation figure, in the paper's order (Fig. 7 a-c).
AXIS_LABELS = {
    "coarsen": "Coarsening factor r",
    "noise": "Noise variance σ²",
    "gap": "Sampling gap g",
}
# One fixed colour and marker per method, so a method looks the same in every panel/figure.
_PALETTE = plt.get_cmap("tab10").colors
METHOD_COLOURS = {
    "pixel": _PALETTE[3],  # red
    "pixel-both": _PALETTE[6],  # pink
    "latent-none": _PALETTE[7],  # grey
    "latent-insitu": _PALETTE[0],  # blue (paper Fig. 8: in-situ blue)
    "latent-exsitu": _PALETTE[1],  # orange (paper Fig. 8: ex-situ orange)
    "latent-both": _PALETTE[2],  # green
    "oi": _PALETTE[4],  # purple
    "oi-both": _PALETTE[9],  # cyan
    "climatology": _PALETTE[5],  # brown
}
# The pixel-space references of figure 8: pixel dashed, the joint pixel prior dotted.
PIXEL_REFERENCES = {
    "pixel": {"color": "k", "ls": "--"},
    "pixel-both": {"color": _PALETTE[6], "ls": ":"},
}
# Panels per row of the training curves (the paper config trains 9 networks).
TRAINING_CURVE_COLUMNS = 5
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")
METRIC_LABELS = {
    "wasserstein": "Wasserstein distance (K)",
    "wasserstein_normalised": "Wasserstein distance / σ_truth (1)",
    "rmse": "RMSE (K)",
    "bias": "Bias (K)",
    "crps": "CRPS (K)",
    "spread_skill": "Spread/skill ratio (1)",
}


def _ordered_methods(present: Sequence[str], methods: Sequence[str] | None) -> list[str]:
    """Requested methods that have data, canonical ones first, unknown ones after (sorted)."""
    if methods is None:
        return ordered_methods(present)
    present = set(present)
    return [m for m in methods if m in present]


def _style(method: str) -> dict:
    if method in METHOD_ORDER:
        index = METHOD_ORDER.index(method)
        colour = METHOD_COLOURS[method]
    else:  # stable per name, so an extra method keeps its colour across figures
        index = len(METHOD_ORDER) + sum(map(ord, method))
        colour = _PALETTE[index % len(_PALETTE)]
    return {"color": colour, "marker": _MARKERS[index % len(_MARKERS)]}


def _save(fig: plt.Figure, out_path: str | Path) -> list[Path]:
    """Write ``out_path`` as PNG and the same name with .pdf; return both paths."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = out_path.with_suffix(".png"), out_path.with_suffix(".pdf")
    fig.savefig(png, dpi=DPI)
    fig.savefig(pdf)
    plt.close(fig)
    return [png, pdf]


def _axis_ticks(panel: plt.Axes, axis: str, values: np.ndarray, labelsize: float) -> None:
    """An ablation axis' values as the x ticks (the noise variances on a log scale), a grid."""
    if axis == "noise" and np.all(values > 0):
        panel.set_xscale("log")
        panel.minorticks_off()
    panel.set_xticks(values)
    panel.set_xticklabels([f"{v:g}" for v in values])
    panel.tick_params(labelsize=labelsize)
    panel.grid(alpha=0.3, lw=0.5)


def _format_level(level: float) -> str:
    return f"t @ {float(level):g} hPa"


def _lines(
    panel: plt.Axes, table: pd.DataFrame, methods: Sequence[str], style: str | None = None
) -> None:
    """One seaborn line with markers per method (its fixed colour and marker), x = ``value``,
    y = ``score``; ``style``: a column drawn as line styles (e.g. the protocol)."""
    present = [m for m in methods if m in set(table["method"])]
    if not present:
        return
    sns.lineplot(
        data=table,
        x="value",
        y="score",
        hue="method",
        hue_order=present,
        palette={m: _style(m)["color"] for m in present},
        style="method" if style is None else style,
        markers=(
            {m: _style(m)["marker"] for m in present}
            if style is None
            else dict.fromkeys(table[style].unique(), "o")
        ),
        dashes=False if style is None else {"physical": "", "paper": (4, 2)},
        errorbar=None,
        legend=False,
        lw=1.3,
        ms=4,
        ax=panel,
    )


def _bands(panel: plt.Axes, intervals: pd.DataFrame, methods: Sequence[str]) -> None:
    """The 95 % interval of each method's score as a shaded band (``low``, ``high``)."""
    for method in methods:
        band = intervals[intervals["method"] == method].sort_values("value")
        if not band.empty:
            panel.fill_between(band["value"], band["low"], band["high"], lw=0, alpha=0.18,
                               color=_style(method)["color"])  # fmt: skip


def plot_ablation(
    scores: pd.DataFrame,
    out_path: str | Path,
    metric: str = "wasserstein",
    days: str = "observed",
    methods: Sequence[str] | None = None,
    reference: float | None = None,
    title: str | None = None,
    intervals: pd.DataFrame | None = None,
) -> list[Path]:
    """Paper Fig. 7: a score against each ablation setting, per level and method.

    One figure: rows = ablation axes (coarsen, noise, gap; absent ones are skipped),
    labelled (a), (b), (c) as in the paper, columns = levels (ascending hPa), x = the axis
    value, y = ``metric``, one seaborn line with markers per method (fixed colour per method),
    one shared legend. Several rows for the same (method, axis, value, level) — e.g. seeds —
    are averaged. The noise axis is drawn on a log scale (variances 0.1 .. 4 span decades).
    A method without the metric (e.g. CRPS of the one-member climatology) has no line.

    Args:
        scores: tidy table with columns method, axis, value, level, days, metric, score.
        out_path: PNG path; a PDF with the same stem is written next to it.
        metric: which metric to plot (e.g. "wasserstein", "rmse").
        days: "observed" or "all" (ignored if the table has no ``days`` column).
        methods: methods to draw, in legend order; default all present.
        reference: draw a dashed horizontal line at this value (e.g. 1 for spread/skill).
        title: figure title above the legend.
        intervals: ``intervals.csv`` rows (``method, axis, value, days, level, metric, low,
            high``): each line gets its 95 % bootstrap interval as a shaded band.

    Returns:
        the written [png, pdf] paths.
    """
    table = scores[scores["metric"] == metric]
    if "days" in table.columns:
        table = table[table["days"] == days]
    table = table[table["axis"].isin(AXIS_LABELS)]
    method_list = _ordered_methods(table["method"].unique(), methods)
    table = table[table["method"].isin(method_list)]
    if table.empty:
        raise ValueError(
            f"no scores for metric={metric!r}, days={days!r}, axes {list(AXIS_LABELS)} and "
            f"methods {methods}: check that the evaluation ran for them"
        )
    table = table.groupby(["axis", "method", "level", "value"], as_index=False)["score"].mean()
    if intervals is not None:
        intervals = intervals[(intervals["metric"] == metric) & (intervals["days"] == days)]
        intervals = intervals[intervals["level"] != "mean"].astype({"level": float})
    axes_present = [a for a in AXIS_LABELS if a in set(table["axis"])]
    levels = np.sort(table["level"].unique())

    n_rows, n_cols = len(axes_present), len(levels)
    # Fixed margins in inches instead of constrained layout: as readable, and several
    # times faster for 30 panels (layout solving dominated the run time).
    left, right, top, bottom = 0.65, 0.15, 0.75 + 0.3 * (title is not None), 0.1
    width = PANEL_WIDTH_IN * n_cols + left + right
    height = PANEL_HEIGHT_IN * n_rows + top + bottom
    fig, panels = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=(bottom + 0.4) / height,  # room for the x labels
        wspace=0.32,
        hspace=0.55,
    )
    y_label = METRIC_LABELS.get(metric, metric)
    for row, axis in enumerate(axes_present):
        axis_table = table[table["axis"] == axis]
        x_values = np.sort(axis_table["value"].unique())
        for col, level in enumerate(levels):
            panel = panels[row, col]
            if intervals is not None:
                cell = intervals[
                    (intervals["axis"] == axis) & np.isclose(intervals["level"], level)
                ]
                _bands(panel, cell, method_list)
            _lines(panel, axis_table[axis_table["level"] == level], method_list)
            if reference is not None:
                panel.axhline(reference, color="0.3", lw=0.9, ls="--", zorder=0)
            _axis_ticks(panel, axis, x_values, labelsize=7)
            panel.set_title(_format_level(level) if row == 0 else "", fontsize=9)
            panel.set_xlabel(AXIS_LABELS[axis], fontsize=8)
            panel.set_ylabel(y_label if col == 0 else "", fontsize=8)
        # The paper's sub-figure letters, one per ablation axis.
        panels[row, 0].text(
            -0.3, 1.08, f"({'abc'[list(AXIS_LABELS).index(axis)]})", fontsize=10,
            fontweight="bold", transform=panels[row, 0].transAxes,
        )  # fmt: skip

    # Legend from proxies: every method once, even if the first panel lacks one.
    handles = [
        plt.Line2D([], [], lw=1.3, ms=4, label=method, **_style(method)) for method in method_list
    ]
    if intervals is not None and not intervals.empty:
        label = "95 % interval (block bootstrap over days)"
        handles.append(plt.Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3, label=label))
    if title is not None:
        fig.suptitle(title, y=1 - 0.06 / height, fontsize=11)
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - (0.08 + 0.3 * (title is not None)) / height),
        ncols=len(handles),
        frameon=False,
        fontsize=9,
    )
    return _save(fig, out_path)


def plot_training_curves(
    loss_csvs: Mapping[str, str | Path],
    out_path: str | Path,
    max_epochs: Mapping[str, int] | None = None,
) -> list[Path]:
    """Training and validation loss per epoch, one panel per model (5 a row), log y axis. A
    star marks the exported (best) epoch; a dashed line marks where training stopped early.

    Args:
        loss_csvs: model name -> CSV with columns epoch, train_loss, val_loss
            (val_loss may be empty on epochs without validation).
        out_path: PNG path; a PDF with the same stem is written next to it.
        max_epochs: model name -> the most epochs it was allowed (its config's ``epochs``); a
            run with fewer epochs stopped early (``patience``).

    Returns:
        the written [png, pdf] paths.
    """
    if not loss_csvs:
        raise ValueError("plot_training_curves needs at least one loss CSV")
    n_models = len(loss_csvs)
    n_cols = min(n_models, TRAINING_CURVE_COLUMNS)
    n_rows = -(-n_models // n_cols)
    fig, panels = plt.subplots(
        n_rows,
        n_cols,
        figsize=(3.2 * n_cols + 0.4, 2.6 * n_rows + 0.2),
        squeeze=False,
        layout="constrained",
    )
    for panel in panels.flat[n_models:]:
        panel.axis("off")
    for panel, (name, path) in zip(panels.flat, loss_csvs.items(), strict=False):
        log = pd.read_csv(path)
        missing = {"epoch", "train_loss", "val_loss"} - set(log.columns)
        if missing:
            raise ValueError(f"{path}: loss CSV lacks columns {sorted(missing)}")
        curves = log.melt("epoch", ["train_loss", "val_loss"], "split", "loss").dropna()
        curves = curves[curves["loss"] > 0]  # log axis
        curves["split"] = curves["split"].map({"train_loss": "train", "val_loss": "validation"})
        # Small markers keep one-epoch (smoke) runs visible.
        sns.lineplot(
            data=curves, x="epoch", y="loss", hue="split", hue_order=["train", "validation"],
            palette={"train": "tab:blue", "validation": "tab:orange"}, marker="o", ms=2.5,
            lw=1.3, errorbar=None, ax=panel,
        )  # fmt: skip
        panel.set_yscale("log")
        panel.set_ylabel("")
        title = name
        selection = log["val_loss"] if log["val_loss"].notna().any() else log["train_loss"]
        if selection.notna().any():
            best = log.loc[selection.idxmin()]
            panel.plot(best["epoch"], selection.min(), marker="*", ms=9, color="black",
                       ls="none", label=f"exported (epoch {int(best['epoch'])})")  # fmt: skip
        limit = (max_epochs or {}).get(name)
        last = int(log["epoch"].max())
        if limit is not None and last < limit:
            panel.axvline(last, color="grey", ls="--", lw=1, label="stopped early")
            title = f"{name}\nstopped at epoch {last} of {limit}"
        panel.set_title(title, fontsize=10)
        panel.set_xlabel("Epoch")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.grid(alpha=0.3, lw=0.5, which="both")
        panel.legend(fontsize=8, frameon=False)
    for row in panels:
        row[0].set_ylabel("Loss (normalised units)")
    return _save(fig, out_path)


# --------------------------------------------------------------------------- figure 8


def _most_degraded(table: pd.DataFrame) -> dict[str, float]:
    """The largest value of each axis present (coarsest, noisiest, sparsest)."""
    present = set(table["axis"])
    return {
        a: float(table.loc[table["axis"] == a, "value"].max()) for a in AXIS_LABELS if a in present
    }


def plot_modality_ablation(
    scores: pd.DataFrame,
    out_path: str | Path,
    metric: str = "wasserstein",
    days: str = "observed",
    settings: Mapping[str, float] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Paper Fig. 8 a-c: the latent modality sets at the most degraded setting of each axis.

    One panel per axis (a: coarsening, b: noise, c: gap). In a panel, y = pressure level
    (10 hPa at the top, as in the atmosphere), one horizontal bar per latent modality set
    present (``latent-none``, ``-insitu``, ``-exsitu``, ``-both``; colours fixed as in every
    figure) and the pixel-space results of that level as vertical segments across the
    level's bars: ``pixel`` dashed, ``pixel-both`` (the joint pixel prior, if present) dotted.
    x = ``metric`` (lower is better).

    Args:
        scores: tidy score table.
        out_path: PNG path; a PDF with the same stem is written next to it.
        metric, days: what to draw.
        settings: axis -> value to show; default the largest value of each axis.

    Returns:
        the written [png, pdf] paths.
    """
    table = scores[(scores["metric"] == metric) & scores["axis"].isin(AXIS_LABELS)]
    if "days" in table.columns:
        table = table[table["days"] == days]
    latent = [m for m in METHOD_ORDER if m.startswith("latent-") and m in set(table["method"])]
    if table.empty or not latent:
        raise ValueError(
            f"no latent scores for metric={metric!r}, days={days!r}: fig. 8 compares the latent "
            "modality sets, run at least one latent-* method"
        )
    settings = dict(settings) if settings is not None else _most_degraded(table)
    table = table.groupby(["axis", "value", "method", "level"], as_index=False)["score"].mean()
    levels = np.sort(table["level"].unique())  # ascending hPa: top of the atmosphere first
    n_panels = len(settings)
    fig, panels = plt.subplots(
        1,
        n_panels,
        figsize=(3.6 * n_panels + 0.4, 0.16 * len(levels) * (len(latent) + 1) + 1.4),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    labels = [_format_level(level) for level in levels]
    table["label"] = table["level"].map(dict(zip(levels, labels, strict=True)))
    for panel, (axis, value) in zip(panels[0], settings.items(), strict=True):
        cell = table[(table["axis"] == axis) & np.isclose(table["value"], value)]
        # one group of bars per level, 10 hPa on top (seaborn puts the first category there)
        sns.barplot(
            data=cell[cell["method"].isin(latent)], y="label", x="score", hue="method",
            order=labels, hue_order=latent, palette=METHOD_COLOURS, orient="h",
            errorbar=None, legend=False, width=0.85, ax=panel,
        )  # fmt: skip
        for reference, style in PIXEL_REFERENCES.items():
            pixel = cell[cell["method"] == reference].set_index("level")["score"]
            for i, level in enumerate(levels):
                if level in pixel.index:
                    panel.plot([pixel[level]] * 2, [i - 0.45, i + 0.45], lw=1.2, **style)
        letter = "abc"[list(AXIS_LABELS).index(axis)]
        panel.set_title(f"({letter}) {AXIS_LABELS[axis]} = {value:g}", fontsize=10)
        panel.set_xlabel(METRIC_LABELS.get(metric, metric), fontsize=9)
        panel.set_ylabel("")
        panel.grid(axis="x", alpha=0.3, lw=0.5)
        panel.set_xlim(left=0)
        panel.tick_params(labelsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=METHOD_COLOURS[m], label=m) for m in latent]
    for reference, style in PIXEL_REFERENCES.items():
        if reference in set(table["method"]):
            handles.append(plt.Line2D([], [], lw=1.2, label=reference, **style))
    # the legend below the panels: a title, if any, takes the top
    fig.legend(
        handles=handles,
        loc="outside lower center" if title is not None else "outside upper center",
        ncols=len(handles),
        frameon=False,
        fontsize=9,
    )
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)


# --------------------------------------------------------------------------- protocols

PROTOCOL_STYLES = {"physical": "-", "paper": "--"}
PROTOCOL_METRICS = ("rmse", "crps")


def plot_protocols(
    scores: pd.DataFrame,
    out_path: str | Path,
    metrics: Sequence[str] = PROTOCOL_METRICS,
    days: str = "observed",
) -> list[Path]:
    """Pixel and the latent methods under each observation protocol, side by side.

    Rows = metrics (level means), columns = ablation axes, x = the axis value; one colour per
    method (as in every figure), solid for the ``physical`` protocol, dashed for ``paper``.
    The gap between a latent method's dashed and solid lines is how much of its score the
    paper's protocol (observing the encoded truth) accounts for. Pixel, OI and climatology
    observe the same way under both protocols, so they are drawn once (solid).
    """
    table = scores[scores["metric"].isin(metrics) & scores["axis"].isin(AXIS_LABELS)]
    if "days" in table.columns:
        table = table[table["days"] == days]
    shown = [m for m in METHOD_ORDER if m.startswith(("pixel", "latent-"))]
    table = table[table["method"].isin(shown)]
    if table.empty:
        raise ValueError(f"no {list(metrics)} scores of pixel or latent methods on {days} days")
    means = table.groupby(["protocol", "method", "metric", "axis", "value"], as_index=False)[
        "score"
    ].mean()
    axes_present = [a for a in AXIS_LABELS if a in set(means["axis"])]
    metrics = [m for m in metrics if m in set(means["metric"])]
    methods = [m for m in shown if m in set(means["method"])]
    protocols = [p for p in PROTOCOL_STYLES if p in set(means["protocol"])]
    fig, panels = plt.subplots(
        len(metrics), len(axes_present), figsize=(3.4 * len(axes_present) + 0.6,
                                                  2.6 * len(metrics) + 1.0),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for row, metric in enumerate(metrics):
        for col, axis in enumerate(axes_present):
            panel = panels[row, col]
            cell = means[(means["metric"] == metric) & (means["axis"] == axis)]
            # methods that observe the same way under both protocols are drawn once
            once = [m for m in methods if METHODS[m].protocol_free and len(protocols) > 1]
            cell = cell[~((cell["protocol"] == "paper") & cell["method"].isin(once))]
            _lines(panel, cell.sort_values("value"), methods, style="protocol")
            _axis_ticks(panel, axis, np.sort(cell["value"].unique()), labelsize=8)
            panel.set_xlabel(AXIS_LABELS[axis], fontsize=9)
            # seaborn labels every panel "score": only the first column says what it is
            label = f"{METRIC_LABELS.get(metric, metric)}, level mean" if col == 0 else ""
            panel.set_ylabel(label, fontsize=9)
    handles = [
        plt.Line2D([], [], lw=1.3, ms=4, marker="o", color=_style(m)["color"], label=m)
        for m in methods
    ]
    handles += [
        plt.Line2D([], [], color="0.3", ls=PROTOCOL_STYLES[p], lw=1.3, label=f"{p} protocol")
        for p in protocols
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
               frameon=False, fontsize=9)  # fmt: skip
    fig.suptitle(
        f"How much of the latent methods' scores is the protocol ({days} days)", fontsize=11
    )
    return _save(fig, out_path)


# --------------------------------------------------------------------------- maps

STATE_CMAP = "RdYlBu_r"
ERROR_CMAP = "RdBu_r"
SPREAD_CMAP = "viridis"
# Below this fraction of observed grid points an observation is drawn as dots, not cells.
SPARSE_FRACTION = 0.25
METHOD_TITLES = {"pixel": "Pixel (SDA)", "oi": "OI", "oi-both": "OI (T, precip., OLR)"}
SHORT_AXIS_LABELS = {"coarsen": "r", "noise": "σ²", "gap": "g"}


def method_title(method: str) -> str:
    if method.startswith("latent-"):
        return f"Latent (SLAMS, {method.removeprefix('latent-')})"
    return METHOD_TITLES.get(method, method)


def _lon_label(value: float) -> str:
    value = value % 360
    if value == 0 or value == 180:
        return f"{value:g}°"
    return f"{value:g}°E" if value < 180 else f"{360 - value:g}°W"


def _lat_label(value: float) -> str:
    if value == 0:
        return "0°"
    return f"{abs(value):g}°{'N' if value > 0 else 'S'}"


def _map_axes(panel: plt.Axes, left: bool, bottom: bool, names: bool = True) -> None:
    """Degree ticks; tick labels on the ``left``/``bottom`` edges, axis names there if ``names``."""
    panel.set_xlim(0, 360)
    panel.set_ylim(-90, 90)
    panel.set_aspect("equal")
    xticks, yticks = np.arange(0, 361, 90), np.arange(-90, 91, 45)
    panel.set_xticks(xticks)
    panel.set_yticks(yticks)
    panel.set_xticklabels([_lon_label(x) for x in xticks] if bottom else [])
    panel.set_yticklabels([_lat_label(y) for y in yticks] if left else [])
    if bottom and names:
        panel.set_xlabel("Longitude", fontsize=8)
    if left and names:
        panel.set_ylabel("Latitude", fontsize=8)
    panel.tick_params(labelsize=7)


def _draw_field(panel: plt.Axes, field: xr.DataArray, cmap: str, norm: Normalize) -> None:
    """A (lat, lon) field as grid cells, or as dots where few points are valid (sparse data)."""
    values = np.asarray(field.transpose("lat", "lon").values, dtype=float)
    lat, lon = np.asarray(field["lat"].values), np.asarray(field["lon"].values)
    valid = np.isfinite(values)
    if valid.mean() < SPARSE_FRACTION:
        panel.set_facecolor("0.92")
        lon_grid, lat_grid = np.meshgrid(lon, lat)
        panel.scatter(
            lon_grid[valid], lat_grid[valid], c=values[valid], cmap=cmap, norm=norm,
            s=14, edgecolors="k", linewidths=0.3,
        )  # fmt: skip
    else:
        panel.pcolormesh(
            cell_edges(lon), cell_edges(lat, -90.0, 90.0), values, cmap=cmap, norm=norm,
            shading="flat", rasterized=True,
        )  # fmt: skip


def _robust_range(fields: Sequence[xr.DataArray], symmetric: bool) -> tuple[float, float]:
    """1st-99th percentile of the pooled values (symmetric: +-99th percentile of |values|)."""
    values = np.concatenate([np.ravel(f.values) for f in fields])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        bound = float(np.percentile(np.abs(values), 99)) or 1.0
        return -bound, bound
    low, high = np.percentile(values, [1, 99])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


def setting_label(axis: str, value: float) -> str:
    return f"{AXIS_LABELS.get(axis, axis)} = {float(value):g}"


def _area_rmse(error: xr.DataArray) -> float:
    """Area-weighted root mean square of a (lat, lon) error map over its finite points (an
    observation's map is NaN where nothing was observed); NaN if none is finite. A panel
    title, not a score: the scores never skip a NaN."""
    lat = error["lat"].values
    weights = xr.DataArray(np.asarray(area_weights(lat)), dims="lat", coords={"lat": lat})
    return float(np.sqrt(np.square(error).weighted(weights).mean(("lat", "lon"), skipna=True)))


def plot_case_maps(
    truth: xr.DataArray,
    observation: xr.DataArray | None,
    analyses: Mapping[str, xr.DataArray],
    out_path: str | Path,
    title: str,
    notes: Sequence[str] = (),
) -> list[Path]:
    """Paper Figs. 3-6: truth, observation and analyses on one day and level, and their errors.

    Top row: truth, observation (grid cells, or dots where sparse), the ensemble mean of each
    analysis, all on one colour scale (1st-99th percentile of the truth; values outside
    saturate). Bottom row: ``notes`` (what is shown, what is missing), observation minus
    truth, analysis minus truth, on one symmetric error scale (99th percentile of the
    analyses' absolute errors, so a noisy observation saturates), each titled with its
    area-weighted RMSE. Colour bars in K.

    Args:
        truth: (lat, lon) K.
        observation: (lat, lon) K, NaN where unobserved; None if there is none.
        analyses: panel title -> (member, lat, lon) or (lat, lon) K; the members are averaged.
        out_path: PNG path; a PDF with the same stem is written next to it.
        title: figure title (case, setting, level, date).
        notes: lines of text for the otherwise empty bottom-left panel.

    Returns:
        the written [png, pdf] paths.
    """
    means = {
        name: (a.mean(metrics.MEMBER) if metrics.MEMBER in a.dims else a)
        for name, a in analyses.items()
    }
    has_observation = observation is not None and bool(np.isfinite(observation.values).any())
    states = {"Truth": truth}
    if has_observation:
        states["Observation"] = observation
    states.update({f"{name}: ensemble mean": mean for name, mean in means.items()})
    errors = {}
    if has_observation:
        errors["Observation − truth"] = observation - truth
    errors.update({f"{name} − truth": mean - truth for name, mean in means.items()})

    n_cols = len(states)
    fig, panels = plt.subplots(
        2, n_cols, figsize=(3.1 * n_cols + 1.0, 4.4), squeeze=False, layout="constrained"
    )
    # Scales from the truth and the analyses' errors: a very noisy or coarse observation
    # saturates instead of washing out the panels that matter.
    state_norm = Normalize(*_robust_range([truth], symmetric=False))
    for col, (name, field) in enumerate(states.items()):
        _draw_field(panels[0, col], field, STATE_CMAP, state_norm)
        _map_axes(panels[0, col], left=True, bottom=False, names=col == 0)
        panels[0, col].set_title(name, fontsize=9)
    fig.colorbar(
        ScalarMappable(state_norm, STATE_CMAP), ax=panels[0, :], extend="both",
        label="Temperature (K)", shrink=0.9, pad=0.01,
    )  # fmt: skip

    notes_panel = panels[1, 0]
    notes_panel.axis("off")
    notes_panel.text(
        0.0, 1.0, "\n".join(notes), va="top", ha="left", fontsize=7.5, wrap=True,
        transform=notes_panel.transAxes,
    )  # fmt: skip
    analysis_errors = [e for name, e in errors.items() if not name.startswith("Observation")]
    error_norm = Normalize(*_robust_range(analysis_errors or list(errors.values()), True))
    for col, (name, error) in enumerate(errors.items(), start=1):
        panel = panels[1, col]
        _draw_field(panel, error, ERROR_CMAP, error_norm)
        _map_axes(panel, left=True, bottom=True, names=col == 1)
        panel.set_title(f"{name}\nRMSE {_area_rmse(error):.2f} K", fontsize=9)
    if errors:
        fig.colorbar(
            ScalarMappable(error_norm, ERROR_CMAP), ax=panels[1, :], extend="both",
            label="Error (K)", shrink=0.9, pad=0.01,
        )  # fmt: skip
    fig.suptitle(title, fontsize=11)
    return _save(fig, out_path)


def plot_spread_error_maps(
    rows: Sequence[tuple[str, Mapping[str, tuple[xr.DataArray, xr.DataArray]]]],
    out_path: str | Path,
    title: str = "",
) -> list[Path]:
    """Ensemble spread beside the actual error, as maps.

    Args:
        rows: (row label, {method: (spread map, RMSE map)}) with (lat, lon) maps in K; the
            spread is expected to carry the sqrt((M+1)/M) correction
            (:func:`slams.metrics.spread`), so that a calibrated ensemble has equal maps.
        out_path: PNG path (PDF beside it).

    Columns alternate spread, RMSE per method; one colour scale per row (0 to the 99th
    percentile of the row's maps), each panel titled with its area-weighted mean.
    """
    if not rows:
        raise ValueError("plot_spread_error_maps needs at least one row")
    n_cols = 2 * max(len(fields) for _, fields in rows)
    fig, panels = plt.subplots(
        len(rows), n_cols, figsize=(2.6 * n_cols + 1.2, 1.75 * len(rows) + 0.9),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for row, (label, fields) in enumerate(rows):
        maps = [m for pair in fields.values() for m in pair]
        high = _robust_range(maps, symmetric=True)[1]
        norm = Normalize(0.0, high)
        col = 0
        for method, (spread_map, rmse_map) in fields.items():
            for kind, field in (("spread", spread_map), ("RMSE", rmse_map)):
                panel = panels[row, col]
                _draw_field(panel, field, SPREAD_CMAP, norm)
                _map_axes(panel, left=col == 0, bottom=row == len(rows) - 1, names=False)
                # area-weighted RMS of the map: the global spread / RMSE of the metrics
                panel.set_title(f"{method}: {kind} ({_area_rmse(field):.2f} K)", fontsize=8)
                col += 1
        for empty in range(col, n_cols):
            panels[row, empty].axis("off")
        panels[row, 0].set_ylabel(label, fontsize=8.5, fontweight="bold")
        fig.colorbar(
            ScalarMappable(norm, SPREAD_CMAP), ax=panels[row, :], extend="max", label="K",
            shrink=0.9, pad=0.01,
        )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out_path)


# --------------------------------------------------------------------------- rank histograms


def plot_rank_histograms(
    histograms: pd.DataFrame,
    settings: Mapping[str, tuple[str, float]],
    out_path: str | Path,
    days: str = "observed",
    methods: Sequence[str] | None = None,
) -> list[Path]:
    """Rank (Talagrand) histograms, pooled over levels: rows = settings, columns = methods.

    Bars are relative frequencies of the truth's rank among the M members (0..M); the dashed
    line is the flat 1/(M+1) of a calibrated ensemble. U-shaped: too little spread; dome:
    too much; sloped: biased.

    Args:
        histograms: tidy table ``method, axis, value, level, days, rank, count``.
        settings: row label -> (axis, value), e.g. the named cases.
        out_path: PNG path (PDF beside it).
        days: ``observed`` or ``all``.
        methods: columns in order; default every method present.

    Returns:
        the written [png, pdf] paths.
    """
    table = histograms[histograms["days"] == days]
    method_list = _ordered_methods(table["method"].unique(), methods)
    rows = []
    for label, (axis, value) in settings.items():
        cell = table[(table["axis"] == axis) & np.isclose(table["value"], float(value))]
        if not cell.empty:
            rows.append((label, axis, float(value), cell))
    if not rows or not method_list:
        raise ValueError(f"no rank histograms for days={days!r} and settings {dict(settings)}")
    fig, panels = plt.subplots(
        len(rows), len(method_list), figsize=(2.1 * len(method_list) + 0.8, 1.6 * len(rows) + 0.8),
        squeeze=False, sharey=True, layout="constrained",
    )  # fmt: skip
    for r, (label, axis, value, cell) in enumerate(rows):
        for c, method in enumerate(method_list):
            panel = panels[r, c]
            counts = cell[cell["method"] == method].groupby("rank")["count"].sum()
            if counts.sum() > 0:
                frequency = (counts / counts.sum()).rename("frequency").reset_index()
                sns.barplot(data=frequency, x="rank", y="frequency", width=0.85, errorbar=None,
                            color=METHOD_COLOURS.get(method, "0.5"), ax=panel)  # fmt: skip
                panel.axhline(1 / len(counts), color="k", ls="--", lw=0.9)
                panel.set_xlabel("")
                panel.set_ylabel("")
            else:
                panel.text(0.5, 0.5, "not run", ha="center", va="center",
                           transform=panel.transAxes, fontsize=8)  # fmt: skip
            panel.tick_params(labelsize=7)
            if r == 0:
                panel.set_title(method, fontsize=9)
            if r == len(rows) - 1:
                panel.set_xlabel("Rank of truth", fontsize=8)
            if c == 0:
                panel.set_ylabel(f"{label}\n{setting_label(axis, value)}\nfrequency", fontsize=8)
    fig.suptitle(f"Rank histograms, all levels pooled, {days} days", fontsize=10)
    return _save(fig, out_path)


def plot_placeholder(out_path: str | Path, title: str, message: str) -> list[Path]:
    """A figure that says why it has nothing to show (e.g. a method the config does not run),
    so that a declared output exists and the report explains the gap."""
    fig, panel = plt.subplots(figsize=(6.0, 2.0))
    panel.axis("off")
    panel.set_title(title, fontsize=11)
    panel.text(0.5, 0.45, message, ha="center", va="center", fontsize=9, wrap=True)
    return _save(fig, out_path)
