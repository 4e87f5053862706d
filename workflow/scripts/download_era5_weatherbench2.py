"""Rule download_era5_weatherbench2: one year of ERA5 from WeatherBench 2's zarr store.

The store's URL comes from config["download"] (not params: changing it must not make
Snakemake fetch finished years again).
"""

from slams.data.download import download_era5_weatherbench2
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
download_era5_weatherbench2(
    snakemake.output[0],
    year=int(snakemake.wildcards.year),
    levels=snakemake.params.levels,
    url=snakemake.config["download"]["era5"]["weatherbench2_url"],
)
