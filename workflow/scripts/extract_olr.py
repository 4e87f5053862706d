"""Rule extract_olr: one year of NOAA's multi-year OLR file, in the same packed format."""

from slams.data.download import extract_olr_year
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
extract_olr_year(snakemake.input[0], snakemake.output[0], year=int(snakemake.wildcards.year))
