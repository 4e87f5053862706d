"""Rule regrid: one year of one source onto the target grid."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.data.regrid import regrid_file
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
regrid_file(
    snakemake.input[0],
    snakemake.output[0],
    source=snakemake.wildcards.source,
    resolution=snakemake.params.resolution,
    backend=snakemake.params.backend,
)
