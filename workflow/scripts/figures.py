"""Rule figures: figure 7 and the training curves."""

from pathlib import Path

import pandas as pd

from slams.plots import plot_ablation, plot_training_curves
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
scores = pd.read_csv(snakemake.input.scores)
plot_ablation(scores, snakemake.output.fig7, metric="wasserstein", days="observed")
curves = {Path(p).name.removesuffix("-losses.csv"): p for p in snakemake.input.losses}
plot_training_curves(curves, snakemake.output.curves)
