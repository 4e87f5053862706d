"""Rule assimilate: one method in one ablation setting over the test period, under one
observation protocol."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.assimilation import run_cell
from slams.workflow import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)
ds = run_cell(
    snakemake.wildcards.protocol,
    snakemake.wildcards.method,
    snakemake.wildcards.axis,
    snakemake.wildcards.value,
    snakemake.params.measurement,
    # windows_per_call changes memory, not results: read here, it reruns nothing
    {
        **snakemake.params.assimilation,
        "windows_per_call": snakemake.config["assimilation"]["windows_per_call"],
    },
    snakemake.params.blanket_days,
    dict(snakemake.input.items()),
    device=snakemake.params.device,
    seed=snakemake.params.seed,
)
ds.to_netcdf(snakemake.output[0])
