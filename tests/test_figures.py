"""Tests of slams.figures.draw and slams.figures.build on small synthetic score tables and
analysis files."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from analysis_files import write_analysis
from matplotlib.collections import PathCollection

from slams.figures import draw
from slams.figures.build import (
    case_map_figure,
    overview_figures,
    protocol_figures,
    spread_error_figure,
)
from slams.figures.draw import (
    DPI,
    plot_ablation,
    plot_modality_ablation,
    plot_rank_histograms,
    plot_training_curves,
    summary_table,
)
from slams.grid import area_weights

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = [10.0, 50.0, 100.0, 200.0, 300.0, 500.0, 700.0, 850.0, 925.0, 1000.0]
AXES = {"coarsen": [4, 8, 12, 15, 20], "noise": [0.1, 0.5, 1.0, 2.0, 4.0], "gap": [4, 8, 12, 16]}
METHODS = ["pixel", "latent-none", "latent-insitu", "latent-exsitu", "latent-both", "oi"]


def synthetic_scores(
    axes=AXES, methods=METHODS, levels=LEVELS, protocol="physical", offset=0.0
) -> pd.DataFrame:
    """Scores that grow with the axis value, differ by method and level; days observed/all."""
    rows = []
    for (axis, values), (m, method), level, days, metric in itertools.product(
        axes.items(), enumerate(methods), levels, ("observed", "all"), ("wasserstein", "rmse")
    ):
        for value in values:
            score = 0.1 * value + 0.2 * m + level / 1000 + (0.5 if days == "all" else 0.0)
            rows.append(
                {
                    "protocol": protocol,
                    "method": method,
                    "axis": axis,
                    "value": float(value),
                    "level": level,
                    "days": days,
                    "metric": metric,
                    "score": score + offset,
                }
            )
    return pd.DataFrame(rows)


def assert_png(path, min_bytes: int = 10_000) -> np.ndarray:
    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    return matplotlib.image.imread(path)


def test_plot_ablation_writes_png_and_pdf(tmp_path):
    out = tmp_path / "figures" / "fig7.png"
    written = plot_ablation(synthetic_scores(), out, metric="wasserstein", days="observed")
    assert written == [out, out.with_suffix(".pdf")]
    image = assert_png(out, min_bytes=50_000)
    pdf = out.with_suffix(".pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    height, width = image.shape[:2]
    # 3 rows x 10 level columns at ~2.2 in per column: a wide figure.
    assert width > 2.5 * height
    assert width >= 10 * 2.2 * DPI
    assert height > 6 * DPI  # three rows of panels
    # Not blank: many distinct colours (lines of several methods).
    rgb = (image[..., :3] * 255).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert np.unique(packed).size > 50


def test_plot_ablation_skips_absent_axes_and_methods(tmp_path):
    scores = synthetic_scores(axes={"gap": AXES["gap"]}, methods=["pixel", "latent-both"])
    partial = plot_ablation(
        scores, tmp_path / "gap.png", metric="rmse", days="all", methods=["latent-both", "oi"]
    )[0]
    # One row of panels (~2 in) instead of three (> 6 in, see the test above).
    assert matplotlib.image.imread(partial).shape[0] < 3.5 * DPI
    with pytest.raises(ValueError, match="no scores"):
        plot_ablation(scores, tmp_path / "none.png", metric="crps")


def test_plot_training_curves(tmp_path):
    epochs = np.arange(1, 11)
    csvs = {}
    for name in ("autoencoder", "score-pixel", "score-latent"):
        path = tmp_path / f"{name}.csv"
        val = 1.2 / epochs
        val[::2] = np.nan  # validation only every other epoch
        pd.DataFrame({"epoch": epochs, "train_loss": 1.0 / epochs, "val_loss": val}).to_csv(
            path, index=False
        )
        csvs[name] = path
    out = tmp_path / "curves.png"
    plot_training_curves(csvs, out)
    image = assert_png(out)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side
    assert out.with_suffix(".pdf").exists()


def test_training_curves_mark_the_exported_epoch_and_an_early_stop(tmp_path, monkeypatch):
    import slams.figures.draw as draw

    csvs = {}
    for name, epochs in (("stopped", 6), ("full", 8)):
        csvs[name] = tmp_path / f"{name}.csv"
        val = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1][:epochs]
        pd.DataFrame({"epoch": np.arange(1, epochs + 1), "train_loss": 0.4,
                      "val_loss": val}).to_csv(csvs[name], index=False)  # fmt: skip
    figures = []
    monkeypatch.setattr(draw, "_save", lambda fig, out: figures.append(fig) or [])
    plot_training_curves(csvs, tmp_path / "curves.png", max_epochs={"stopped": 8, "full": 8})
    stopped, full = figures[0].axes[:2]
    assert stopped.get_title() == "stopped\nstopped at epoch 6 of 8" and full.get_title() == "full"
    labels = [line.get_label() for line in stopped.get_lines()]
    assert "exported (epoch 2)" in labels and "stopped early" in labels
    assert "stopped early" not in [line.get_label() for line in full.get_lines()]


def test_summary_table_averages_over_levels():
    scores = synthetic_scores(axes={"coarsen": [4, 20]}, methods=["pixel", "latent-both"])
    markdown = summary_table(scores)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| axis | value | metric | pixel | latent-both |"
    # 2 values x 2 metrics, plus header and separator.
    assert len(lines) == 2 + 4
    # latent-both is method index 1: 0.1*20 + 0.2 + mean(level)/1000 on observed days.
    expected = 0.1 * 20 + 0.2 + np.mean(LEVELS) / 1000
    assert f"| coarsen | 20 | rmse | {expected - 0.2:.3f} | {expected:.3f} |" in lines


# --------------------------------------------------------------------------- new figures


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plotting functions save, kept open for inspection."""
    kept = []

    def keep(fig, out_path):
        kept.append(fig)
        fig.savefig(Path(out_path).with_suffix(".png"), dpi=40)
        Path(out_path).with_suffix(".pdf").write_bytes(b"%PDF-")  # PDF writing is tested above
        return [Path(out_path), Path(out_path).with_suffix(".pdf")]

    monkeypatch.setattr(draw, "_save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def map_panels(fig):
    """The map axes of a figure (those with an x range of 0-360 °E)."""
    return [a for a in fig.axes if a.get_xlim() == (0.0, 360.0)]


def colorbar_labels(fig):
    return sorted(a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>")


def drawn_values(panel) -> np.ndarray:
    """Data values of the cells or dots drawn in a map panel."""
    values = [np.ma.filled(c.get_array(), np.nan).ravel() for c in panel.collections]
    return np.concatenate(values) if values else np.array([])


def test_plot_ablation_reference_line_title_and_letters(figures, tmp_path):
    scores = synthetic_scores(axes={"coarsen": [4, 20], "gap": [4, 16]}, levels=[200.0, 850.0])
    plot_ablation(scores, tmp_path / "r.png", metric="rmse", reference=1.0, title="RMSE")
    fig = figures[-1]
    assert fig.get_suptitle() == "RMSE"
    panels = [a for a in fig.axes if a.get_xlabel()]
    assert len(panels) == 2 * 2
    letters = sorted(t.get_text() for a in panels for t in a.texts)
    assert letters == ["(a)", "(c)"]  # coarsen and gap: the paper's a and c, noise absent
    for panel in panels:
        dashed = [line for line in panel.lines if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {1.0}
    assert panels[0].get_ylabel() == "RMSE (K)"


def test_plot_modality_ablation_bars_levels_and_pixel_lines(figures, tmp_path):
    axes = {"coarsen": [4, 20], "noise": [0.1, 4.0], "gap": [4, 16]}
    levels = [10.0, 200.0, 1000.0]
    scores = synthetic_scores(axes=axes, levels=levels)
    out = tmp_path / "fig8.png"
    assert plot_modality_ablation(scores, out) == [out, out.with_suffix(".pdf")]
    fig = figures[-1]
    panels = [a for a in fig.axes if a.get_xlabel()]
    assert [p.get_title() for p in panels] == [
        "(a) Coarsening factor r = 20",
        "(b) Noise variance σ² = 4",
        "(c) Sampling gap g = 16",
    ]
    assert all(p.get_xlabel() == "Wasserstein distance (K)" for p in panels)
    # top of the atmosphere on top: y ticks descend with pressure
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    ticks = list(panels[0].get_yticks())
    top_down = sorted(ticks, reverse=not panels[0].yaxis_inverted())
    assert [labels[ticks.index(y)] for y in top_down] == [
        "t @ 10 hPa",
        "t @ 200 hPa",
        "t @ 1000 hPa",
    ]
    n_latent = 4  # latent-none, -insitu, -exsitu, -both
    for panel, values in zip(panels, axes.values(), strict=True):
        assert len(panel.patches) == n_latent * len(levels)
        pixel_lines = [line for line in panel.lines if line.get_linestyle() == "--"]
        assert len(pixel_lines) == len(levels)
        # pixel (method index 0) at the most degraded value and 1000 hPa, from synthetic_scores
        expected = 0.1 * max(values) + 1000 / 1000
        assert any(np.allclose(line.get_xdata(), expected) for line in pixel_lines)
    with pytest.raises(ValueError, match="latent"):
        plot_modality_ablation(synthetic_scores(methods=["pixel"]), tmp_path / "none.png")


def write_case_files(root, axis="coarsen", value=4.0, methods=("pixel", "latent-both")):
    return {
        m: write_analysis(root, m, axis, value, n_days=4, seed=i) for i, m in enumerate(methods)
    }


def test_case_map_figure_panels_colour_bars_and_title(figures, tmp_path):
    paths = write_case_files(tmp_path)
    out = tmp_path / "fig3-ideal.png"
    case_map_figure(paths, out, "ideal", "Figure 3", missing={"oi analysis": "not run"})
    assert out.exists() and out.with_suffix(".pdf").exists()
    fig = figures[-1]
    # truth, observation, two analyses; observation error and two analysis errors
    maps = map_panels(fig)
    assert len(maps) == 4 + 3
    titles = [a.get_title() for a in maps]
    assert titles[:4] == [
        "Truth",
        "Observation",
        "Pixel (SDA): ensemble mean",
        "Latent (SLAMS, both): ensemble mean",
    ]
    assert titles[4].startswith("Observation − truth\nRMSE ")
    assert colorbar_labels(fig) == ["Error (K)", "Temperature (K)"]
    # the ideal case is shown at 200 hPa, on the middle observed day (days 0 and 2: day 0)
    assert (
        fig.get_suptitle()
        == "Figure 3: ideal case (Coarsening factor r = 4), t @ 200 hPa, 2004-01-01"
    )
    for panel in maps:
        assert np.isfinite(drawn_values(panel)).any(), panel.get_title()
        assert [t.get_text() for t in panel.get_yticklabels()][-2:] == ["45°N", "90°N"]
    for panel in maps[4:]:  # longitudes under the bottom row
        assert [t.get_text() for t in panel.get_xticklabels()][:2] == ["0°", "90°E"]
    assert maps[0].get_ylabel() == "Latitude" and maps[4].get_xlabel() == "Longitude"
    notes = "\n".join(t.get_text() for a in fig.axes for t in a.texts)
    assert "2004-01-01 (observed)" in notes and "No oi analysis panel: not run." in notes
    # the truth panel shows the truth of that day and level
    with xr.open_dataset(paths["pixel"]) as ds:
        truth = ds["truth"].isel(time=0).sel(level=200.0).values
    np.testing.assert_allclose(np.sort(drawn_values(maps[0])), np.sort(truth.ravel()), rtol=1e-6)


def test_case_map_figure_sparse_observation_as_dots(figures, tmp_path):
    ds_paths = write_case_files(tmp_path, axis="gap", value=4.0, methods=("pixel",))
    with xr.open_dataset(ds_paths["pixel"]) as ds:
        ds = ds.load()
    sparse = ds["observation"].where((ds["lat"] * 0 + np.arange(ds.sizes["lat"])) % 4 == 0)
    ds["observation"] = sparse.where(xr.DataArray(np.arange(ds.sizes["lon"]) % 4 == 0, dims="lon"))
    ds.to_netcdf(tmp_path / "sparse.nc")
    case_map_figure({"pixel": tmp_path / "sparse.nc"}, tmp_path / "s.png", "sparse", "Figure 6")
    fig = figures[-1]
    observation = map_panels(fig)[1]
    assert isinstance(observation.collections[0], PathCollection)  # dots, not cells
    assert len(drawn_values(observation)) == (16 // 4) * (32 // 4)
    assert "t @ 1000 hPa" in fig.get_suptitle()
    # the observation's error is titled with its RMSE over the observed points, not NaN
    day = ds.sel(time=pd.Timestamp(fig.get_suptitle().split(", ")[-1]), level=1000.0)
    error = (day["observation"] - day["truth"]).transpose("lat", "lon").values
    weights = np.broadcast_to(np.asarray(area_weights(day["lat"].values))[:, None], error.shape)
    valid = np.isfinite(error)
    expected = np.sqrt((weights[valid] * error[valid] ** 2).sum() / weights[valid].sum())
    title = map_panels(fig)[3].get_title()
    assert title.startswith("Observation − truth\nRMSE "), title
    assert float(title.split("RMSE ")[1].split(" K")[0]) == pytest.approx(expected, abs=0.006)


def test_spread_error_figure_skips_single_members(figures, tmp_path):
    first = write_case_files(tmp_path / "a", methods=("pixel", "climatology"))
    rows = [("ideal", 200.0, first), ("sparse", 1000.0, first)]
    with xr.open_dataset(first["climatology"]) as ds:
        ds = ds.isel(member=[0]).load()
    ds.to_netcdf(tmp_path / "climatology.nc")
    first["climatology"] = tmp_path / "climatology.nc"
    spread_error_figure(rows, tmp_path / "spread.png")
    fig = figures[-1]
    maps = map_panels(fig)
    assert len(maps) == 2 * 2  # climatology (one member) has no spread: pixel only
    assert [a.get_title().split(" (")[0] for a in maps[:2]] == ["pixel: spread", "pixel: RMSE"]
    assert colorbar_labels(fig) == ["K", "K"]
    assert all(np.isfinite(drawn_values(a)).all() and drawn_values(a).min() >= 0 for a in maps)
    spread_error_figure(
        [("ideal", 200.0, {"climatology": first["climatology"]})], tmp_path / "p.png"
    )
    assert "No ensemble method" in "".join(t.get_text() for a in figures[-1].axes for t in a.texts)


def test_plot_rank_histograms_frequencies(figures, tmp_path):
    rows = []
    for method, counts in (("pixel", [5, 1, 1, 5]), ("oi", [2, 2, 2, 2])):
        for level in (200.0, 1000.0):
            for rank, count in enumerate(counts):
                rows.append(["physical", method, "gap", 16.0, level, "observed", rank, count])
    table = pd.DataFrame(
        rows, columns=["protocol", "method", "axis", "value", "level", "days", "rank", "count"]
    )
    plot_rank_histograms(table, {"sparse": ("gap", 16), "absent": ("noise", 4)}, tmp_path / "h.png")
    fig = figures[-1]
    panels = [a for a in fig.axes if a.patches]
    assert [p.get_title() for p in panels] == ["pixel", "oi"]  # one row: "absent" has no data
    heights = [np.array([b.get_height() for b in p.patches]) for p in panels]
    np.testing.assert_allclose(heights[0], np.array([5, 1, 1, 5]) / 12)
    np.testing.assert_allclose(heights[1], 0.25)
    assert all(p.lines[0].get_ydata()[0] == pytest.approx(0.25) for p in panels)
    assert "sparse" in panels[0].get_ylabel()


def test_protocol_and_overview_figures_write_every_output_or_say_why(figures, tmp_path):
    scores = synthetic_scores(axes={"coarsen": [4, 20]}, methods=["pixel", "oi"], levels=[200.0])
    other = synthetic_scores(axes={"coarsen": [4]}, methods=["pixel"], levels=[200.0],
                             protocol="paper")  # fmt: skip
    pd.concat([scores, other]).to_csv(tmp_path / "scores.csv", index=False)
    ranks = pd.DataFrame(
        [["physical", "pixel", "coarsen", 20.0, 200.0, "observed", r, 3] for r in range(3)],
        columns=["protocol", "method", "axis", "value", "level", "days", "rank", "count"],
    )
    ranks.to_csv(tmp_path / "ranks.csv", index=False)
    keys = ["fig7", "fig8", "rmse", "crps", "spread_skill", "rank_histograms"]
    outputs = {key: tmp_path / f"{key}.png" for key in keys}
    protocol_figures(tmp_path / "scores.csv", tmp_path / "ranks.csv", outputs,
                     {"coarse": ("coarsen", "20")}, "physical")  # fmt: skip
    assert all(path.exists() for path in outputs.values())
    titles = {fig.axes[0].get_title() for fig in figures}
    # no latent method, no crps/spread_skill scores: said in the figure
    assert {"Figure 8", "CRPS", "Spread/skill ratio"} <= titles
    # only the physical protocol's scores are drawn: the paper row at coarsen 4 is not
    fig7 = figures[0]
    assert {tuple(line.get_xdata()) for a in fig7.axes for line in a.lines} == {(4.0, 20.0)}
    with pytest.raises(ValueError, match="no scores of the nonsense protocol"):
        protocol_figures(tmp_path / "scores.csv", tmp_path / "ranks.csv", {}, {}, "nonsense")
    overview = {"protocols": tmp_path / "protocols.png", "curves": tmp_path / "curves.png",
                "summary": tmp_path / "summary.md"}  # fmt: skip
    overview_figures(tmp_path / "scores.csv", {}, overview, {"coarse": ("coarsen", "20")})
    assert all(path.exists() for path in overview.values())
    assert "Training curves" in {fig.axes[0].get_title() for fig in figures}
    outputs["summary"] = overview["summary"]
    assert "| coarse | coarsen 20 | RMSE (K) |" in outputs["summary"].read_text()


def test_plot_protocols_draws_latent_methods_under_both_protocols(figures, tmp_path):
    """Solid physical, dashed paper; pixel observes the same way in both, drawn once."""
    methods = ["pixel", "latent-none", "latent-both", "oi"]
    physical = synthetic_scores(
        axes={"coarsen": [4, 20], "gap": [4]},
        methods=methods,
        levels=[200.0, 850.0],
        protocol="physical",
        offset=0.5,
    )
    paper = synthetic_scores(axes={"coarsen": [4, 20], "gap": [4]}, methods=methods,
                             levels=[200.0, 850.0], protocol="paper")  # fmt: skip
    scores = pd.concat([physical, paper])
    scores = scores[~((scores["protocol"] == "physical") & (scores["method"] == "latent-none")
                      & (scores["value"] == 20))]  # fmt: skip
    draw.plot_protocols(scores, tmp_path / "p.png", metrics=("rmse",))
    fig = figures[-1]
    panel = fig.axes[0]  # rmse against coarsening
    styles = sorted((line.get_linestyle(), len(line.get_xdata())) for line in panel.lines)
    # pixel solid once, latent-none physical (one point) solid, latent-both solid, and the two
    # latent methods dashed under the paper protocol; oi is not drawn
    assert styles == [("-", 1), ("-", 2), ("-", 2), ("--", 2), ("--", 2)]
    latent_both = [line for line in panel.lines
                   if line.get_color() == draw.METHOD_COLOURS["latent-both"]]  # fmt: skip
    by_style = {line.get_linestyle(): line.get_ydata() for line in latent_both}
    np.testing.assert_allclose(by_style["-"] - by_style["--"], 0.5)  # the protocol's share
