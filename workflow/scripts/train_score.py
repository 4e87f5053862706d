"""Rule train_score: a score network in pixel space or in one latent space."""

import xarray as xr

from slams.train import TrainSettings, states_of, train_score
from slams.workflow import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)
opts = snakemake.params.training
settings = TrainSettings(
    epochs=opts["epochs"],
    batch_size=opts["batch_size"],
    learning_rate=opts["learning_rate"],
    weight_decay=opts["weight_decay"],
    seed=snakemake.params.seed,
    device=snakemake.params.device,
)
space = snakemake.wildcards.space


def load(path):
    """Standardised daily states (T, C, H, W) and their dates."""
    with xr.open_dataset(path) as ds:
        if space == "pixel":
            return states_of(ds, ["t"]), ds["time"].values
        z = (ds["z"] - ds["z_mean"]) / ds["z_std"]
        return states_of(z.to_dataset(name="z"), ["z"]), ds["time"].values


train_states, train_times = load(snakemake.input.train)
validation_states, validation_times = load(snakemake.input.validation)
train_score(
    train_states,
    train_times,
    validation_states,
    validation_times,
    window=opts["window"],
    network=snakemake.params.network,
    settings=settings,
    model_path=snakemake.output.model,
    losses_csv=snakemake.output.losses,
    description=f"score-{space}",
    metadata={"space": space},
)
