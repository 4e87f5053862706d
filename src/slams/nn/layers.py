"""Building blocks for networks on a regular latitude-longitude grid.

Images are ``(B, C, H, W)`` with ``H`` = latitude (south to north) and ``W`` = longitude.
Longitude is periodic, latitude is not: a convolution wraps around in ``W`` (the
antimeridian is an ordinary neighbour) but pads ``H`` with zeros, so that the North
pole row never sees the South pole row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last in memory (and not also in the default
    layout, as one with a single channel or pixel is)."""
    return (
        x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    )


class _WrapLongitude(torch.autograd.Function):
    """``x (..., W) -> (..., W + 2p)``: the last ``p`` columns, ``x``, the first ``p`` columns.

    The same values as ``F.pad(x, (p, p, 0, 0), mode="circular")``, with a backward that
    folds the wrapped columns' gradients back in one pass (autograd of the padding slices
    zero-fills and copies the whole gradient once per slice, ~13 % of a guided U-Net
    evaluation on the demo). Written in the ``setup_context`` style with a forward-mode rule
    (``jvp``) and a generated vmap rule, so that ``torch.func`` transforms work through it
    (MMPS guidance pushes tangents through the decoder with ``torch.func.jvp``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, p: int) -> Tensor:
        return torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.p = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        p = ctx.p
        out = grad[..., p:-p].clone()
        out[..., :p] += grad[..., -p:]
        out[..., -p:] += grad[..., :p]
        return out, None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _p_tangent) -> Tensor:
        p = ctx.p
        return torch.cat([tangent[..., -p:], tangent, tangent[..., :p]], dim=-1)


def wrap_longitude(x: Tensor, p: int) -> Tensor:
    """Circular padding of ``p`` columns on both sides of the last (longitude) axis."""
    if p > x.shape[-1]:
        raise ValueError(f"cannot wrap {p} columns of a grid {x.shape[-1]} wide")
    return _WrapLongitude.apply(x, p) if p > 0 else x


class PeriodicConv2d(nn.Conv2d):
    """2-D convolution with circular padding in longitude and zero padding in latitude.

    With an odd ``kernel_size`` k and padding p = k // 2 on each side, the output grid is
    ``(ceil(H / stride), ceil(W / stride))``, i.e. the same ``(H, W)`` for ``stride=1``
    and exactly ``(H / 2, W / 2)`` for ``stride=2`` on even grids.

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, H', W')``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = True
    ):
        if kernel_size % 2 != 1:
            raise ValueError(
                f"PeriodicConv2d needs an odd kernel_size to keep the grid, got {kernel_size}"
            )
        self.lon_padding = kernel_size // 2
        # Zero padding in latitude is done by the convolution itself; longitude is padded
        # circularly in forward() because Conv2d cannot mix padding modes per dimension.
        super().__init__(
            in_ch,
            out_ch,
            kernel_size,
            stride=stride,
            padding=(kernel_size // 2, 0),
            bias=bias,
        )

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(wrap_longitude(x, self.lon_padding))


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channel axis of ``(B, C, H, W)``, independently per pixel.

    ``y = (x - mean_C(x)) / sqrt(var_C(x) + eps)``. No affine parameters: the residual
    blocks apply a time-dependent scale and shift right after the normalisation.

    Two passes (the mean, then the mean square of the centred values) rather than
    ``torch.var_mean``: the same numbers to float32 rounding, but ``var_mean`` over a strided
    channel axis is ~6x slower on the CPU, forward and backward (~10 % of a guided U-Net
    evaluation on the demo; ``benchmarks/sampler_step.py``).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if is_channels_last(x):
            # channels innermost in memory: the fused layer norm over the last axis of the
            # (B, H, W, C) view, one pass each way
            return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=self.eps).permute(
                0, 3, 1, 2
            )
        centred = x - x.mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps)


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a diffusion time ``t in [0, 1]``.

    ``phi(t) = [sin(omega_j t), cos(omega_j t)]_j`` with ``features / 2`` frequencies
    ``omega_j`` spaced geometrically in ``[1, max_frequency]`` (radians per unit time), so
    that the finest features resolve time steps of ``1 / max_frequency``.

    Shapes: ``(B,) -> (B, features)``.
    """

    def __init__(self, features: int, max_frequency: float = 1e3):
        super().__init__()
        if features % 2 != 0:
            raise ValueError(f"SinusoidalEmbedding needs an even feature count, got {features}")
        frequencies = torch.exp(torch.linspace(0.0, math.log(max_frequency), features // 2))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t[:, None] * self.frequencies.to(t.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """Time-modulated residual block: ``x + conv(SiLU(conv(SiLU(LN(x) * (1 + a) + b))))``.

    ``(a, b) = Linear(embedding)`` are a per-channel scale and shift computed from the
    time embedding, so that the block's behaviour depends on the noise level.

    Shapes: ``x (B, C, H, W)``, ``embedding (B, E) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, embedding: int, kernel_size: int = 3):
        super().__init__()
        self.norm = ChannelLayerNorm()
        self.modulation = nn.Linear(embedding, 2 * channels)
        self.conv1 = PeriodicConv2d(channels, channels, kernel_size)
        self.conv2 = PeriodicConv2d(channels, channels, kernel_size)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        scale, shift = self.modulation(embedding)[..., None, None].chunk(2, dim=1)
        if self.modulation.weight.requires_grad:
            h = self.norm(x) * (1 + scale) + shift  # training: as the networks were trained
        else:  # frozen: one pass instead of two (float32 rounding apart: a fused multiply-add)
            h = torch.addcmul(shift, self.norm(x), 1 + scale)
        h = self.conv1(F.silu(h))
        h = self.conv2(F.silu(h))
        return x + h
