"""Rule download_olr: NOAA's interpolated daily OLR (all years in one file) over HTTP.

Timeouts and retries come from config["download"]["http"] (not params: changing them must
not make Snakemake fetch finished files again).
"""

from slams.data.download import HttpOptions, download_olr
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
download_olr(
    snakemake.output[0],
    url=snakemake.params.url,
    options=HttpOptions(**snakemake.config["download"]["http"]),
)
