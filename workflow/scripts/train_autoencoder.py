"""Rule train_autoencoder: one autoencoder per modality set."""

import xarray as xr

from slams.train import TrainSettings, train_autoencoder
from slams.workflow import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)
net = snakemake.params.network
settings = TrainSettings(
    epochs=net["epochs"],
    batch_size=net["batch_size"],
    learning_rate=net["learning_rate"],
    weight_decay=net["weight_decay"],
    seed=snakemake.params.seed,
    device=snakemake.params.device,
)
with (
    xr.open_dataset(snakemake.input.train) as train,
    xr.open_dataset(snakemake.input.validation) as validation,
):
    train_autoencoder(
        train.load(),
        validation.load(),
        snakemake.wildcards.modalities,
        net,
        settings,
        snakemake.output.model,
        snakemake.output.losses,
    )
