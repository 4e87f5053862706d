"""Rule protocol_figures: figures 7 and 8, scores against degradation and rank histograms of
one observation protocol, from the score tables."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.figures.build import protocol_figures
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
protocol_figures(
    snakemake.input.scores,
    snakemake.input.rank_histograms,
    {key: snakemake.output[key] for key in snakemake.output.keys() if not key.endswith("_pdf")},
    cases=snakemake.params.cases,
    protocol=snakemake.wildcards.protocol,
    days=snakemake.params.days,
    intervals_csv=snakemake.input.intervals,
)
