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

from slams.data.dataset import MODALITY_VARIABLES
from slams.nn import AutoEncoder, ScoreUNet

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


def for_sampling(model: nn.Module) -> nn.Module:
    """A frozen model made ready for the sampler, in place (returned for chaining).

    - Eval-mode BatchNorms are folded into the convolutions before them (the autoencoder's):
      two passes less per layer, forward and backward.
    - On the CPU the convolution weights go channels-last, so that the activations are
      channels-last from the first layer on and oneDNN skips its layout conversions around
      every convolution, which dominate the demo's narrow layers (8-16 channels). With the
      channel LayerNorm's fused kernel and the modulation's multiply-add that this layout
      takes (:class:`~slams.nn.ResidualBlock`), a guided evaluation of the demo's U-Nets is
      ~1.15-1.2x faster (the changelog).

    The same numbers to float32 rounding (sums in another order). Training and encoding keep
    the default layout and the BatchNorms, so the trained networks and codes do not depend on
    it. On a GPU the folding applies, and the frozen modulation's multiply-add, not the layout.
    """
    _fold_batch_norms(model)
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def _fold_batch_norms(model: nn.Module) -> None:
    """Every eval-mode BatchNorm2d right after a Conv2d in an ``nn.Sequential`` (the
    autoencoder's) folded into the convolution's weights and bias and replaced by an identity:
    ``gamma (conv(x) - mean) / sqrt(var + eps) + beta`` is a per-channel affine map of the
    convolution's output. Two passes less per layer each way, the same numbers to float32
    rounding."""
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if not (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and not norm.training
                and norm.running_mean is not None
            ):
                continue
            scale = torch.rsqrt(norm.running_var + norm.eps)
            shift = -norm.running_mean * scale
            if norm.affine:
                scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            conv.weight.mul_(scale[:, None, None, None])
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            sequence[i + 1] = nn.Identity()


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
