"""Rule significance: bootstrap intervals of the scores and of the differences between methods."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

import pandas as pd

from slams.significance import significance
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
table, intervals = significance(
    pd.read_csv(snakemake.input.daily),
    samples=snakemake.params.samples,
    block=snakemake.params.block,
    seed=snakemake.params.seed,
)
table.to_csv(snakemake.output.significance, index=False)
intervals.to_csv(snakemake.output.intervals, index=False)
