"""Figures from the tidy score table (``scores.csv``) and the training logs.

Everything is plain matplotlib on the non-interactive Agg backend, so the functions run
on cluster nodes without a display. Each figure is written as PNG and as PDF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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
METHOD_ORDER = (
    "pixel",
    "latent-none",
    "latent-insitu",
    "latent-exsitu",
    "latent-both",
    "oi",
    "climatology",
)
_PALETTE = plt.get_cmap("tab10").colors
METHOD_COLOURS = {
    "pixel": _PALETTE[3],  # red
    "latent-none": _PALETTE[7],  # grey
    "latent-insitu": _PALETTE[0],  # blue (paper Fig. 8: in-situ blue)
    "latent-exsitu": _PALETTE[1],  # orange (paper Fig. 8: ex-situ orange)
    "latent-both": _PALETTE[2],  # green
    "oi": _PALETTE[4],  # purple
    "climatology": _PALETTE[5],  # brown
}
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
    present = set(present)
    if methods is None:
        known = [m for m in METHOD_ORDER if m in present]
        return known + sorted(present - set(METHOD_ORDER))
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


def _format_level(level: float) -> str:
    return f"t @ {float(level):g} hPa"


def plot_ablation(
    scores: pd.DataFrame,
    out_path: str | Path,
    metric: str = "wasserstein",
    days: str = "observed",
    methods: Sequence[str] | None = None,
) -> list[Path]:
    """Paper Fig. 7: a score against each ablation setting, per level and method.

    One figure: rows = ablation axes (coarsen, noise, gap; absent ones are skipped),
    columns = levels (ascending hPa), x = the axis value, y = ``metric``, one line with
    markers per method (fixed colour per method), one shared legend. Several rows for
    the same (method, axis, value, level) — e.g. seeds — are averaged. The noise axis
    is drawn on a log scale (variances 0.1 .. 4 span decades).

    Args:
        scores: tidy table with columns method, axis, value, level, days, metric, score.
        out_path: PNG path; a PDF with the same stem is written next to it.
        metric: which metric to plot (e.g. "wasserstein", "rmse").
        days: "observed" or "all" (ignored if the table has no ``days`` column).
        methods: methods to draw, in legend order; default all present.

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
    axes_present = [a for a in AXIS_LABELS if a in set(table["axis"])]
    levels = np.sort(table["level"].unique())

    n_rows, n_cols = len(axes_present), len(levels)
    # Fixed margins in inches instead of constrained layout: as readable, and several
    # times faster for 30 panels (layout solving dominated the run time).
    left, right, top, bottom = 0.65, 0.15, 0.75, 0.1
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
            cell = axis_table[axis_table["level"] == level]
            for method in method_list:
                line = cell[cell["method"] == method].sort_values("value")
                if line.empty:
                    continue
                panel.plot(
                    line["value"], line["score"], label=method, lw=1.3, ms=4, **_style(method)
                )
            if axis == "noise" and np.all(x_values > 0):
                panel.set_xscale("log")
                panel.minorticks_off()
            panel.set_xticks(x_values)
            panel.set_xticklabels([f"{v:g}" for v in x_values])
            panel.tick_params(labelsize=7)
            panel.grid(alpha=0.3, lw=0.5)
            if row == 0:
                panel.set_title(_format_level(level), fontsize=9)
            panel.set_xlabel(AXIS_LABELS[axis], fontsize=8)
            if col == 0:
                panel.set_ylabel(y_label, fontsize=8)

    # Legend from proxies: every method once, even if the first panel lacks one.
    handles = [
        plt.Line2D([], [], lw=1.3, ms=4, label=method, **_style(method)) for method in method_list
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.08 / height),
        ncols=len(handles),
        frameon=False,
        fontsize=9,
    )
    return _save(fig, out_path)


def plot_training_curves(loss_csvs: Mapping[str, str | Path], out_path: str | Path) -> list[Path]:
    """Training and validation loss per epoch, one panel per model, log y axis.

    Args:
        loss_csvs: model name -> CSV with columns epoch, train_loss, val_loss
            (val_loss may be empty on epochs without validation).
        out_path: PNG path; a PDF with the same stem is written next to it.

    Returns:
        the written [png, pdf] paths.
    """
    if not loss_csvs:
        raise ValueError("plot_training_curves needs at least one loss CSV")
    n_models = len(loss_csvs)
    fig, panels = plt.subplots(
        1,
        n_models,
        figsize=(3.2 * n_models + 0.4, 2.8),
        squeeze=False,
        layout="constrained",
    )
    for panel, (name, path) in zip(panels[0], loss_csvs.items(), strict=True):
        log = pd.read_csv(path)
        missing = {"epoch", "train_loss", "val_loss"} - set(log.columns)
        if missing:
            raise ValueError(f"{path}: loss CSV lacks columns {sorted(missing)}")
        for column, label, colour in (
            ("train_loss", "train", "tab:blue"),
            ("val_loss", "validation", "tab:orange"),
        ):
            curve = log[["epoch", column]].dropna()
            curve = curve[curve[column] > 0]  # log axis
            # Small markers keep one-epoch (smoke) runs visible.
            panel.plot(
                curve["epoch"], curve[column], label=label, color=colour, lw=1.3, marker="o", ms=2.5
            )
        panel.set_yscale("log")
        panel.set_title(name, fontsize=10)
        panel.set_xlabel("Epoch")
        panel.grid(alpha=0.3, lw=0.5, which="both")
        panel.legend(fontsize=8, frameon=False)
    panels[0, 0].set_ylabel("Loss (normalised units)")
    return _save(fig, out_path)


def summary_table(
    scores: pd.DataFrame,
    metrics: Sequence[str] = ("rmse", "wasserstein"),
    days: str = "observed",
) -> str:
    """Markdown table of scores averaged over levels, by ablation setting and method.

    Rows are (axis, value, metric), columns the methods (canonical order); each cell is
    the mean of ``score`` over levels (and seeds) with 3 decimals, "–" when missing.
    """
    table = scores[scores["metric"].isin(metrics)]
    if "days" in table.columns:
        table = table[table["days"] == days]
    if table.empty:
        raise ValueError(f"no scores for metrics {list(metrics)} and days={days!r}")
    mean = table.groupby(["axis", "value", "metric", "method"])["score"].mean()
    wide = mean.unstack("method")
    method_list = _ordered_methods(list(wide.columns), None)
    axis_rank = {a: i for i, a in enumerate(AXIS_LABELS)}
    metric_rank = {m: i for i, m in enumerate(metrics)}
    keys = sorted(
        wide.index,
        key=lambda k: (axis_rank.get(k[0], len(axis_rank)), str(k[0]), k[1], metric_rank[k[2]]),
    )
    header = ["axis", "value", "metric", *method_list]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(method_list)) + "|",
    ]
    for key in keys:
        cells = [str(key[0]), f"{key[1]:g}", str(key[2])]
        for method in method_list:
            value = wide.loc[key, method]
            cells.append("–" if pd.isna(value) else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
