"""Rule evaluate: every analysis file into one tidy scores table."""

from slams.evaluate import score_files
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
score_files(list(snakemake.input)).to_csv(snakemake.output[0], index=False)
