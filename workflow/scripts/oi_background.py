"""Rule oi_background: the static background covariance of optimal interpolation (oi: the
temperature anomaly; oi-both: the joint stack with precipitation and OLR)."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.methods.oi import background_of
from slams.workflow import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)
background = background_of(
    snakemake.input.train,
    snakemake.params.rank,
    snakemake.params.seed,
    variables=tuple(snakemake.params.variables),
)
background.save(snakemake.output[0])
