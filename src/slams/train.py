"""Training of the autoencoders and score networks: one plain PyTorch loop shared by all models.

AdamW, learning rate decayed linearly to zero over all steps, a validation loss every epoch,
losses per epoch in a CSV, and a checkpoint that rebuilds the model without the config.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

from slams.diffusion import VPSDE, denoising_loss
from slams.nn import AutoEncoder, ScoreUNet

log = logging.getLogger(__name__)

MODALITY_VARIABLES = {
    "none": (),
    "insitu": ("precip",),
    "exsitu": ("olr",),
    "both": ("precip", "olr"),
}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int = 0
    device: str = "cpu"


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but no CUDA GPU is visible; use 'auto'")
    return torch.device(device)


def autoencoder_channels(n_levels: int, modalities: str) -> int:
    """Encoder input channels: temperature levels plus (value, validity mask) per modality."""
    return n_levels + 2 * len(MODALITY_VARIABLES[modalities])


def autoencoder_inputs(ds: xr.Dataset, modalities: str) -> np.ndarray:
    """Stack the encoder input of every day: ``(T, levels + 2 * n_modalities, H, W)`` float32.

    Temperature levels first, then each modality followed by its validity mask, so that a
    missing value (filled with 0 in the dataset) is never mistaken for a real zero.
    """
    channels = [ds["t"].transpose("time", "level", "lat", "lon").values]
    for var in MODALITY_VARIABLES[modalities]:
        channels.append(ds[var].transpose("time", "lat", "lon").values[:, None])
        channels.append(ds[f"{var}_mask"].transpose("time", "lat", "lon").values[:, None])
    return np.concatenate(channels, axis=1).astype(np.float32)


def consecutive_starts(times: np.ndarray, window: int) -> np.ndarray:
    """Start indices of windows of ``window`` consecutive days (no window spans a missing day)."""
    days = (times.astype("datetime64[D]") - times[0].astype("datetime64[D]")).astype(np.int64)
    starts = np.arange(len(days) - window + 1)
    return starts[days[starts + window - 1] - days[starts] == window - 1]


class WindowDataset(torch.utils.data.Dataset):
    """Markov-blanket training windows: ``x[i : i + K]`` stacked on channels, ``(K * C, H, W)``."""

    def __init__(self, states: Tensor, starts: np.ndarray, window: int):
        self.states, self.starts, self.window = states, starts, window

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Tensor:
        s = int(self.starts[i])
        return self.states[s : s + self.window].flatten(0, 1)


def _loader(data, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=False
    )


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor, torch.Generator], Tensor],
    train_data: torch.utils.data.Dataset,
    validation_data: torch.utils.data.Dataset,
    settings: TrainSettings,
    losses_csv: str | Path,
    description: str = "training",
) -> list[dict]:
    """Train ``model`` in place and return the history (one dict per epoch).

    ``loss_fn(model, batch, generator)`` returns the scalar loss of a batch; the generator makes
    the noise of the validation loss identical at every epoch so the curve is comparable.
    """
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model.to(device)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    train_loader = _loader(train_data, settings.batch_size, True, settings.seed)
    validation_loader = _loader(validation_data, settings.batch_size, False, settings.seed)
    total_steps = max(1, settings.epochs * len(train_loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.0, 1.0 - step / total_steps)
    )
    train_generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    history: list[dict] = []
    losses_csv = Path(losses_csv)
    losses_csv.parent.mkdir(parents=True, exist_ok=True)
    with losses_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["epoch", "train_loss", "val_loss", "lr", "samples_per_s"]
        )
        writer.writeheader()
        for epoch in range(1, settings.epochs + 1):
            model.train()
            start, seen, total = time.perf_counter(), 0, 0.0
            bar = tqdm(train_loader, desc=f"{description} {epoch}/{settings.epochs}", leave=False)
            for batch in bar:
                batch = batch.to(device)
                loss = loss_fn(model, batch, train_generator)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"{description}: loss became {loss.item()} in epoch {epoch}; "
                        "lower the learning rate or check the inputs for NaN"
                    )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                seen += len(batch)
                total += loss.item() * len(batch)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            elapsed = time.perf_counter() - start
            val_loss = evaluate_loss(model, loss_fn, validation_loader, device, settings.seed + 2)
            row = {
                "epoch": epoch,
                "train_loss": total / max(seen, 1),
                "val_loss": val_loss,
                "lr": schedule.get_last_lr()[0],
                "samples_per_s": seen / max(elapsed, 1e-9),
            }
            writer.writerow(row)
            handle.flush()
            history.append(row)
            log.info(
                "%s epoch %d/%d: train %.5f, validation %.5f, %.1f samples/s",
                description,
                epoch,
                settings.epochs,
                row["train_loss"],
                val_loss,
                row["samples_per_s"],
            )
    return history


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor, torch.Generator], Tensor],
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    seed: int,
) -> float:
    """Mean loss over a loader with the model in eval mode and a fixed noise seed."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    total, seen = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        total += loss_fn(model, batch, generator).item() * len(batch)
        seen += len(batch)
    return total / max(seen, 1) if seen else math.nan


# --------------------------------------------------------------------------- autoencoder


def autoencoder_loss(n_levels: int) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
    """Mean squared reconstruction error of the temperature channels (the first ``n_levels``)."""

    def loss(model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        return (model(batch) - batch[:, :n_levels]).square().mean()

    return loss


def train_autoencoder(
    train: xr.Dataset,
    validation: xr.Dataset,
    modalities: str,
    network: dict,
    settings: TrainSettings,
    model_path: str | Path,
    losses_csv: str | Path,
) -> AutoEncoder:
    """Train the autoencoder of one modality set and save its checkpoint."""
    n_levels = train.sizes["level"]
    kwargs = {
        "in_channels": autoencoder_channels(n_levels, modalities),
        "out_channels": n_levels,
        "latent_channels": network["latent_channels"],
        "hidden": network["hidden"],
        "layers": network["layers"],
        "kernel_size": network["kernel_size"],
    }
    model = AutoEncoder(**kwargs)
    fit(
        model,
        autoencoder_loss(n_levels),
        torch.from_numpy(autoencoder_inputs(train, modalities)),
        torch.from_numpy(autoencoder_inputs(validation, modalities)),
        settings,
        losses_csv,
        description=f"autoencoder-{modalities}",
    )
    save_checkpoint(
        model_path,
        model,
        "autoencoder",
        kwargs,
        {"modalities": modalities, "levels": train["level"].values.tolist()},
    )
    return model


# --------------------------------------------------------------------------- score networks


def score_loss(sde: VPSDE) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
    """Denoising score matching ``||eps_phi(mu x + sigma eps, t) - eps||^2``, ``t ~ U(0, 1)``."""

    def loss(model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        return denoising_loss(model, batch, sde, generator=generator)

    return loss


def train_score(
    train_states: Tensor,
    train_times: np.ndarray,
    validation_states: Tensor,
    validation_times: np.ndarray,
    window: int,
    network: dict,
    settings: TrainSettings,
    model_path: str | Path,
    losses_csv: str | Path,
    description: str = "score",
    metadata: dict | None = None,
) -> ScoreUNet:
    """Train a score U-Net on Markov-blanket windows of daily states ``(T, C, H, W)``."""
    channels = train_states.shape[1]
    kwargs = {
        "in_channels": window * channels,
        "hidden": list(network["hidden"]),
        "blocks": list(network["blocks"]),
    }
    model = ScoreUNet(**kwargs)
    train_data = WindowDataset(train_states, consecutive_starts(train_times, window), window)
    validation_data = WindowDataset(
        validation_states, consecutive_starts(validation_times, window), window
    )
    fit(model, score_loss(VPSDE()), train_data, validation_data, settings, losses_csv, description)
    save_checkpoint(
        model_path,
        model,
        "score",
        kwargs,
        {"window": window, "state_channels": channels, **(metadata or {})},
    )
    return model


# --------------------------------------------------------------------------- checkpoints

_MODELS = {"autoencoder": AutoEncoder, "score": ScoreUNet}


def save_checkpoint(path: str | Path, model: nn.Module, kind: str, kwargs: dict, meta: dict):
    """Weights plus everything needed to rebuild the model (class and constructor arguments)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"kind": kind, "kwargs": kwargs, "meta": meta, "state_dict": state}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model in eval mode (BatchNorm uses its running statistics)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = _MODELS[checkpoint["kind"]](**checkpoint["kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, checkpoint["meta"]


def states_of(ds: xr.Dataset, variables: Sequence[str] = ("t",)) -> Tensor:
    """Daily states ``(T, C, H, W)`` float32 from named variables of a split file."""
    arrays = []
    for var in variables:
        da = ds[var]
        da = da.transpose("time", *[d for d in da.dims if d != "time"])
        values = da.values
        arrays.append(values if values.ndim == 4 else values[:, None])
    return torch.from_numpy(np.concatenate(arrays, axis=1).astype(np.float32))


# --------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_splits(
    model_path: str | Path,
    split_paths: dict[str, str | Path],
    out_paths: dict[str, str | Path],
    device: str = "cpu",
    batch_size: int = 64,
) -> None:
    """Encode every day of every split once with the frozen encoder (eval mode).

    Writes ``z`` ``(time, channel, lat, lon)`` and the per-channel ``z_mean``/``z_std`` of the
    TRAINING split (the latent score network works on standardised codes) to each output file.
    """
    torch_device = resolve_device(device)
    model, meta = load_model(model_path, torch_device)
    codes = {}
    for split, path in split_paths.items():
        with xr.open_dataset(path) as ds:
            inputs = torch.from_numpy(autoencoder_inputs(ds, meta["modalities"]))
            z = torch.cat(
                [model.encode(b.to(torch_device)).cpu() for b in inputs.split(batch_size)]
            )
            codes[split] = (ds, z.numpy())
    train_z = codes["train"][1]
    z_mean = train_z.mean(axis=(0, 2, 3))
    z_std = train_z.std(axis=(0, 2, 3)) + 1e-6
    for split, (ds, z) in codes.items():
        out = xr.Dataset(
            {
                "z": (("time", "channel", "lat", "lon"), z.astype(np.float32)),
                "z_mean": (("channel",), z_mean.astype(np.float32)),
                "z_std": (("channel",), z_std.astype(np.float32)),
            },
            coords={"time": ds["time"], "lat": ds["lat"], "lon": ds["lon"]},
            attrs={"modalities": meta["modalities"], "encoder": str(model_path)},
        )
        Path(out_paths[split]).parent.mkdir(parents=True, exist_ok=True)
        out.to_netcdf(out_paths[split])
