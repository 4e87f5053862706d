"""Convolutional autoencoder mapping states (+ observation modalities) to a latent grid."""

from __future__ import annotations

from torch import Tensor, nn

from slams.nn.layers import PeriodicConv2d


def _conv_stack(
    in_channels: int,
    out_channels: int,
    hidden: int,
    layers: int,
    kernel_size: int,
    down: int = 0,
    up: int = 0,
) -> nn.Sequential:
    """``layers`` PeriodicConv2d, BatchNorm + ReLU between them, none after the last.

    The first ``down`` convolutions have stride 2 (each halves the grid); the last ``up``
    convolutions are preceded by a nearest-neighbour 2x upsampling (each doubles it).
    """
    if layers < 1:
        raise ValueError(f"the autoencoder needs at least one layer, got layers={layers}")
    if max(down, up) > layers:
        raise ValueError(f"{layers} layers cannot resample the grid {max(down, up)} times")
    widths = [in_channels] + [hidden] * (layers - 1) + [out_channels]
    modules: list[nn.Module] = []
    for i in range(layers):
        if i >= layers - up:
            modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
        stride = 2 if i < down else 1
        modules.append(PeriodicConv2d(widths[i], widths[i + 1], kernel_size, stride=stride))
        if i < layers - 1:
            modules += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*modules)


class AutoEncoder(nn.Module):
    """Encoder ``f_theta: (B, in_channels, H, W) -> (B, latent_channels, H, W)`` and decoder
    ``g_phi: (B, latent_channels, H, W) -> (B, out_channels, H, W)`` (paper section 3.2).

    Each is ``layers`` PeriodicConv2d with BatchNorm + ReLU between layers. With
    ``downsample = 1`` (the paper) every convolution has stride 1 and the latent grid is the
    input grid; beyond the paper, ``downsample = 2`` or ``4`` gives the first 1 or 2 encoder
    convolutions stride 2 and precedes the last 1 or 2 decoder convolutions by a 2x
    nearest-neighbour upsampling, so the latent grid is ``(H / f, W / f)``. The encoder input
    is the temperature levels plus the observation modalities stacked on channels; the decoder
    output is the temperature.

    BatchNorm uses batch statistics in training mode: call ``.eval()`` whenever the
    autoencoder is used frozen (encoding training data for the score network,
    assimilation), otherwise the latent code depends on the batch composition.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        latent_channels: int,
        hidden: int = 64,
        layers: int = 5,
        kernel_size: int = 5,
        downsample: int = 1,
    ):
        super().__init__()
        if downsample not in (1, 2, 4):
            raise ValueError(f"downsample must be 1, 2 or 4, got {downsample}")
        steps = downsample.bit_length() - 1
        self.downsample = downsample
        self.encoder = _conv_stack(
            in_channels, latent_channels, hidden, layers, kernel_size, down=steps
        )
        self.decoder = _conv_stack(
            latent_channels, out_channels, hidden, layers, kernel_size, up=steps
        )

    def encode(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> z (B, latent_channels, H / f, W / f)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``(B, latent_channels, H / f, W / f) -> x_hat (B, out_channels, H, W)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.decode(self.encode(x))
