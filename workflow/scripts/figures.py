"""Rule figures: the protocols compared, training curves and the markdown summary, from the
score table and the loss logs."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from pathlib import Path

from slams.figures.build import overview_figures
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
overview_figures(
    snakemake.input.scores,
    {Path(p).name.removesuffix("-losses.csv"): p for p in snakemake.input.losses},
    {key: snakemake.output[key] for key in snakemake.output.keys() if not key.endswith("_pdf")},
    cases=snakemake.params.cases,
    name=snakemake.params.name,
    days=snakemake.params.days,
    daily_csv=snakemake.input.daily,
    significance_csv=snakemake.input.significance,
    max_epochs=snakemake.params.max_epochs,
)
