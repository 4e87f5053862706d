"""A tiny test period with every file an analysis reads, and untrained networks of each kind.

Temperature anomalies are multiples of 1/16 below 8 in magnitude, so block means of them are
exact in float32 whatever the order of summation: a change inside a block that keeps its
mean leaves the observations bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from slams.methods.oi import Background
from slams.models import autoencoder_inputs, save_model
from slams.nn import AutoEncoder, ScoreUNet

DAYS, LEVELS, HEIGHT, WIDTH = 10, 2, 8, 16
WINDOW = 3
LATENT_CHANNELS = 3
MEASUREMENT = {"coarsen": 2, "gap": 1, "noise": 0.1, "every": 2}
ASSIMILATION = {
    "members": 2,
    "segment_days": DAYS,
    "period": None,
    "sampler": {"steps": 3, "corrections": 1},
    "observation_variance": {"precip": 0.1, "olr": 0.2},
}


def make_split(seed: int = 0) -> xr.Dataset:
    """The normalised test split: t (dyadic), precip with a land mask, olr, and masks."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-90 + 90 / HEIGHT, 90 - 90 / HEIGHT, HEIGHT)
    lon = np.arange(WIDTH) * 360 / WIDTH + 180 / WIDTH
    t = np.clip(np.round(rng.normal(size=(DAYS, LEVELS, HEIGHT, WIDTH)) * 16) / 16, -7, 7)
    land = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    land[2:6, 3:9] = 1
    precip = rng.normal(size=(DAYS, HEIGHT, WIDTH)) * land
    olr = rng.normal(size=(DAYS, HEIGHT, WIDTH))
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {
            "t": (("time", "level", "lat", "lon"), t.astype(np.float32)),
            "precip": (dims, precip.astype(np.float32)),
            "precip_mask": (dims, np.broadcast_to(land, precip.shape).astype(np.float32)),
            "olr": (dims, olr.astype(np.float32)),
            "olr_mask": (dims, np.ones_like(olr, dtype=np.float32)),
        },
        coords={
            "time": pd.date_range("2004-01-01", periods=DAYS),
            "level": [500.0, 850.0],
            "lat": lat,
            "lon": lon,
        },
    )


def write_world(root: Path, split: xr.Dataset | None = None) -> dict[str, str]:
    """Every file of one analysis under ``root``; returns the paths by role."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split = make_split() if split is None else split
    torch.manual_seed(0)
    paths = {k: str(root / name) for k, name in (
        ("test", "test.nc"), ("stats", "stats.json"), ("climatology", "climatology.nc"),
        ("background", "oi-background.pt"), ("autoencoder", "autoencoder-both.pt"),
        ("latent_stats", "latents-train.nc"), ("latents", "latents-test.nc"),
        ("validation", "validation.nc"),
    )}  # fmt: skip
    split.to_netcdf(paths["test"])
    make_split(seed=1).to_netcdf(paths["validation"])
    stats = {
        "t": {"mean": [250.0, 270.0], "std": [10.0, 12.0], "anomaly_std": [2.0, 3.0]},
        "precip": {"mean": 0.5, "std": 0.7, "transform": "log1p"},
        "olr": {"mean": 230.0, "std": 40.0},
        "levels": [500.0, 850.0],
        "train_years": [2000, 2002],
    }
    Path(paths["stats"]).write_text(json.dumps(stats))
    clim = 250 + np.zeros((366, LEVELS, HEIGHT, WIDTH), dtype=np.float32)
    xr.Dataset(
        {"t": (("dayofyear", "level", "lat", "lon"), clim)},
        coords={"dayofyear": np.arange(1, 367), "level": split["level"], "lat": split["lat"],
                "lon": split["lon"]},
    ).to_netcdf(paths["climatology"])  # fmt: skip
    modes = torch.linalg.qr(torch.randn(LEVELS * HEIGHT * WIDTH, 4))[0].T
    Background(
        modes.reshape(4, LEVELS, HEIGHT, WIDTH).contiguous(),
        torch.tensor([4.0, 2.0, 1.0, 0.5]),
        torch.full((LEVELS, HEIGHT, WIDTH), 0.3),
    ).save(paths["background"])
    # oi-both: a joint background over temperature, precipitation and OLR
    paths["background-oi-both"] = str(root / "oi-both-background.pt")
    joint = torch.linalg.qr(torch.randn((LEVELS + 2) * HEIGHT * WIDTH, 4))[0].T
    Background(
        joint.reshape(4, LEVELS + 2, HEIGHT, WIDTH).contiguous(),
        torch.tensor([4.0, 2.0, 1.0, 0.5]),
        torch.full((LEVELS + 2, HEIGHT, WIDTH), 0.3),
    ).save(paths["background-oi-both"])
    for space, channels in (("pixel", LEVELS), ("pixel-both", LEVELS + 2),
                            ("latent-both", LATENT_CHANNELS)):  # fmt: skip
        kwargs = {"in_channels": WINDOW * channels, "hidden": [4, 8], "blocks": [1, 1]}
        paths[f"score-{space}"] = str(root / f"score-{space}.pt")
        save_model(paths[f"score-{space}"], ScoreUNet(**kwargs), "score", kwargs,
                   {"window": WINDOW, "state_channels": channels, "space": space})  # fmt: skip
    kwargs = {"in_channels": LEVELS + 4, "out_channels": LEVELS + 2,
              "latent_channels": LATENT_CHANNELS, "hidden": 4, "layers": 2,
              "kernel_size": 3}  # fmt: skip
    autoencoder = AutoEncoder(**kwargs).eval()
    meta = {"modalities": "both", "decodes": ["t", "precip", "olr"], "levels": [500.0, 850.0]}
    save_model(paths["autoencoder"], autoencoder, "autoencoder", kwargs, meta)
    z_mean, z_std = np.array([0.1, -0.2, 0.3]), np.array([1.5, 0.5, 2.0])
    channel = xr.Dataset({"z_mean": ("channel", z_mean), "z_std": ("channel", z_std)})
    channel.to_netcdf(paths["latent_stats"])
    write_latents(paths["latents"], split, autoencoder, channel)
    return paths


def write_latents(path: str, split: xr.Dataset, autoencoder, channel: xr.Dataset) -> None:
    """The encoded truth of every day, as the workflow's encode rule writes it."""
    with torch.no_grad():
        z = autoencoder.encode(torch.from_numpy(autoencoder_inputs(split, "both"))).numpy()
    xr.Dataset(
        {"z": (("time", "channel", "lat", "lon"), z), **channel.data_vars},
        coords={"time": split["time"], "lat": split["lat"], "lon": split["lon"]},
    ).to_netcdf(path)


def method_paths(paths: dict[str, str], method: str, protocol: str) -> dict[str, str]:
    """The inputs of one analysis, as the workflow passes them."""
    base = {k: paths[k] for k in ("test", "stats", "climatology")}
    if method == "oi":
        base["background"] = paths["background"]
    elif method == "oi-both":
        base["background"] = paths["background-oi-both"]
    elif method in ("pixel", "pixel-both"):
        base["score"] = paths[f"score-{method}"]
    elif method == "latent-both":
        base["score"] = paths["score-latent-both"]
        base["autoencoder"] = paths["autoencoder"]
        base["latent_stats"] = paths["latent_stats"]
        # the decoder's residuals (both protocols) and error (physical) come from validation days
        base["validation"] = paths["validation"]
        if protocol == "paper":
            base["latents"] = paths["latents"]
    return base
