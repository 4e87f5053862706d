"""Rule train_score: a score network in pixel space or in one latent space (resumable)."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.train import train_score
from slams.workflow import setup_logging, train_settings

setup_logging(snakemake.log[0])

train_score(
    snakemake.input.train,
    snakemake.input.validation,
    snakemake.wildcards.space,
    snakemake.params.training["blanket_days"],
    snakemake.params.network,
    train_settings(snakemake, snakemake.params.training),
    snakemake.output.model,
    snakemake.output.losses,
    checkpoint_dir=snakemake.params.checkpoints,
    metadata={"config": snakemake.config},
)
