"""Rule merge_era5: the monthly ERA5 files of one year in one file."""

from slams.data.download import merge_era5_year
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
merge_era5_year(list(snakemake.input), snakemake.output[0], year=int(snakemake.wildcards.year))
