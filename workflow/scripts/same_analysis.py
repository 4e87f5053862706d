"""Rule same_analysis: a cell whose analysis another cell computes, as a relabelled copy."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.assimilation import relabel_copy
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
relabel_copy(
    snakemake.input[0],
    snakemake.output[0],
    snakemake.wildcards.axis,
    snakemake.wildcards.value,
    protocol=snakemake.wildcards.protocol,
)
