"""Rule dataset: normalised splits, statistics and climatology."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.data.dataset import build_dataset
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
build_dataset(
    list(snakemake.input.t),
    list(snakemake.input.precip),
    list(snakemake.input.olr),
    snakemake.params.out_dir,
    splits={name: tuple(years) for name, years in snakemake.params.splits.items()},
)
