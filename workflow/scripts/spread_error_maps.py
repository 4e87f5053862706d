"""Rule spread_error_maps: ensemble spread beside the actual error, for every named case."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.figures.build import spread_error_figure
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
spread_error_figure(snakemake.params.cases, snakemake.output.png, days=snakemake.params.days)
