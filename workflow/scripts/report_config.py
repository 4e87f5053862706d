"""Rule report_config: the validated config, defaults filled in, as YAML."""

from slams.figures.summary import write_config
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
write_config(snakemake.params.config, snakemake.params.configfiles, snakemake.output[0])
