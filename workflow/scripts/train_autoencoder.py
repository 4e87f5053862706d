"""Rule train_autoencoder: one autoencoder per modality set (resumes from its checkpoints)."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.train import train_autoencoder
from slams.workflow import setup_logging, train_settings

setup_logging(snakemake.log[0])

train_autoencoder(
    snakemake.input.train,
    snakemake.input.validation,
    snakemake.wildcards.modalities,
    snakemake.params.network,
    train_settings(snakemake, snakemake.params.network),
    snakemake.output.model,
    snakemake.output.losses,
    checkpoint_dir=snakemake.params.checkpoints,
    metadata={"config": snakemake.config},
)
