"""Convolutional autoencoder mapping states (+ observation modalities) to a latent grid."""

from __future__ import annotations

from torch import Tensor, nn

from slams.nn.layers import PeriodicConv2d


def _conv_stack(
    in_channels: int, out_channels: int, hidden: int, layers: int, kernel_size: int
) -> nn.Sequential:
    """``layers`` stride-1 PeriodicConv2d, BatchNorm + ReLU between them, none after the last."""
    if layers < 1:
        raise ValueError(f"the autoencoder needs at least one layer, got layers={layers}")
    widths = [in_channels] + [hidden] * (layers - 1) + [out_channels]
    modules: list[nn.Module] = []
    for i in range(layers):
        modules.append(PeriodicConv2d(widths[i], widths[i + 1], kernel_size))
        if i < layers - 1:
            modules += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*modules)


class AutoEncoder(nn.Module):
    """Encoder ``f_theta: (B, in_channels, H, W) -> (B, latent_channels, H, W)`` and decoder
    ``g_phi: (B, latent_channels, H, W) -> (B, out_channels, H, W)`` (paper section 3.2).

    Each is ``layers`` PeriodicConv2d of stride 1 (the latent grid is the input grid) with
    BatchNorm + ReLU between layers. The encoder input is the temperature levels plus the
    observation modalities stacked on channels; the decoder output is the temperature.

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
    ):
        super().__init__()
        self.encoder = _conv_stack(in_channels, latent_channels, hidden, layers, kernel_size)
        self.decoder = _conv_stack(latent_channels, out_channels, hidden, layers, kernel_size)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> z (B, latent_channels, H, W)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``(B, latent_channels, H, W) -> x_hat (B, out_channels, H, W)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.decode(self.encode(x))
