"""Model files and devices, shared by training, assimilation and the baselines.

The workflow's networks are stored as one ``.pt`` file each: the kind of model, its
constructor arguments, metadata and the weights, so a file rebuilds its network without the
config. Nothing here trains: :mod:`slams.train` writes these files, the assimilation methods
(:mod:`slams.methods`) read them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from slams.nn import AutoEncoder, ScoreUNet
from slams.observations import MODALITY_VARIABLES

# kind -> class; a model file's ``kind`` names its class here.
MODELS: dict[str, type[nn.Module]] = {"autoencoder": AutoEncoder, "score": ScoreUNet}


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but no CUDA GPU is visible; use 'auto'")
    return torch.device(device)


def save_atomic(obj: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary name, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(path: str | Path, model: nn.Module, kind: str, kwargs: dict, meta: dict) -> None:
    """Weights plus everything needed to rebuild the model (its kind and constructor arguments)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic({"kind": kind, "kwargs": kwargs, "meta": meta, "state_dict": state}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model in eval mode (BatchNorm uses its running statistics), frozen."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = MODELS[checkpoint["kind"]](**checkpoint["kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, checkpoint["meta"]


def states_of(ds: xr.Dataset, variables: Sequence[str] = ("t",)) -> Tensor:
    """Daily states ``(T, C, H, W)`` float32 from named variables of an in-memory split; a
    ``(time, level, lat, lon)`` variable gives ``level`` channels, a ``(time, lat, lon)`` one."""
    arrays = []
    for var in variables:
        da = ds[var]
        da = da.transpose("time", *[d for d in da.dims if d != "time"])
        values = da.values
        arrays.append(values if values.ndim == 4 else values[:, None])
    return torch.from_numpy(np.concatenate(arrays, axis=1).astype(np.float32))


# --------------------------------------------------------------------------- inputs


def autoencoder_variables(modalities: str) -> list[str]:
    """Encoder input variables: temperature, then each modality followed by its validity mask,
    so that a missing value (filled with 0 in the dataset) is never mistaken for a real zero."""
    names = ["t"]
    for var in MODALITY_VARIABLES[modalities]:
        names += [var, f"{var}_mask"]
    return names


def autoencoder_channels(n_levels: int, modalities: str) -> int:
    """Encoder input channels: temperature levels plus (value, validity mask) per modality."""
    return n_levels + 2 * len(MODALITY_VARIABLES[modalities])


def autoencoder_inputs(ds: xr.Dataset, modalities: str) -> np.ndarray:
    """The encoder input of every day of an in-memory split, ``(T, C, H, W)`` float32 (the
    layout :class:`NetCDFSamples` streams for training)."""
    channels = [ds["t"].transpose("time", "level", "lat", "lon").values]
    for var in MODALITY_VARIABLES[modalities]:
        channels.append(ds[var].transpose("time", "lat", "lon").values[:, None])
        channels.append(ds[f"{var}_mask"].transpose("time", "lat", "lon").values[:, None])
    return np.concatenate(channels, axis=1).astype(np.float32)
