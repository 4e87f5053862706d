"""Tests of slams.plots on a small synthetic score table."""

from __future__ import annotations

import itertools

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from slams.plots import DPI, plot_ablation, plot_training_curves, summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = [10.0, 50.0, 100.0, 200.0, 300.0, 500.0, 700.0, 850.0, 925.0, 1000.0]
AXES = {"coarsen": [4, 8, 12, 15, 20], "noise": [0.1, 0.5, 1.0, 2.0, 4.0], "gap": [4, 8, 12, 16]}
METHODS = ["pixel", "latent-none", "latent-insitu", "latent-exsitu", "latent-both", "oi"]


def synthetic_scores(axes=AXES, methods=METHODS, levels=LEVELS) -> pd.DataFrame:
    """Scores that grow with the axis value, differ by method and level; days observed/all."""
    rows = []
    for (axis, values), (m, method), level, days, metric in itertools.product(
        axes.items(), enumerate(methods), levels, ("observed", "all"), ("wasserstein", "rmse")
    ):
        for value in values:
            score = 0.1 * value + 0.2 * m + level / 1000 + (0.5 if days == "all" else 0.0)
            rows.append(
                {
                    "method": method,
                    "axis": axis,
                    "value": float(value),
                    "level": level,
                    "days": days,
                    "metric": metric,
                    "score": score,
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
