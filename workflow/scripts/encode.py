"""Rule encode: latent codes of every split by the frozen encoder."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.train import encode_splits
from slams.workflow import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)
splits = ("train", "validation", "test")
encode_splits(
    snakemake.input.model,
    dict(zip(splits, snakemake.input.splits, strict=True)),
    dict(zip(splits, snakemake.output, strict=True)),
    device=snakemake.params.device,
)
