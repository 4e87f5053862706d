"""Rule download_era5: one month of ERA5 daily-mean temperature from the CDS.

The request limit comes from config["download"] (not params: changing it must not make
Snakemake fetch finished months again).
"""

from slams.data.download import download_era5_month
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
era5 = snakemake.config["download"]["era5"]
download_era5_month(
    snakemake.output[0],
    year=int(snakemake.wildcards.year),
    month=int(snakemake.wildcards.month),
    levels=snakemake.params.levels,
    slots_dir=snakemake.params.slots_dir,
    max_in_flight=era5["max_requests_in_flight"],
    poll_s=era5["poll_s"],
)
