"""Rule download_cpc: one year of CPC daily precipitation over HTTP.

Timeouts and retries come from config["download"]["http"] (not params: changing them must
not make Snakemake fetch finished files again).
"""

from slams.data.download import HttpOptions, download_cpc
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
download_cpc(
    snakemake.output[0],
    year=int(snakemake.wildcards.year),
    url=snakemake.params.url,
    options=HttpOptions(**snakemake.config["download"]["http"]),
)
