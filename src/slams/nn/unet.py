"""Score U-Net ``eps_phi(x(t), t)`` on a periodic-in-longitude grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slams.diffusion.sde import VPSDE
from slams.nn.layers import PeriodicConv2d, ResidualBlock, SinusoidalEmbedding, is_channels_last


class ScoreUNet(nn.Module):
    """U-Net predicting the noise ``eps`` of ``x(t) = mu(t) x + sigma(t) eps``.

    Architecture (paper section 3.3): one level per entry of ``hidden``; level i holds
    ``blocks[i]`` time-modulated residual blocks (LayerNorm over channels, SiLU,
    PeriodicConv2d) at ``hidden[i]`` channels. Between levels the grid is halved by a
    stride-2 PeriodicConv2d on the way down and doubled by nearest-neighbour upsampling
    plus a PeriodicConv2d on the way up; the decoder concatenates the encoder features of
    the same level (skip connection) and runs ``blocks[i]`` blocks again. The time ``t``
    enters through sinusoidal features -> Linear(time_features, time_hidden) -> SiLU ->
    Linear(time_hidden, time_features), shared by all blocks.

    Output (beyond the paper, preconditioned)::

        eps = sigma x_t / (mu^2 + sigma^2) + mu / sqrt(mu^2 + sigma^2) * (tail(h) + s(t) x_t)

    The first term is the exact eps of a standard-normal prior (the data are standardised);
    the network adds the residual, faded where that term is exact, plus a learned per-channel
    skip ``s(t)`` (zero at start). At t -> 1 the prior term is almost the whole answer
    (eps ~ x_t / sigma, one number per input channel and pixel), which a network narrower than
    its input (hidden[0] < K * C) cannot pass through, and the sampler's first steps amplify
    any error there by ~1/mu(1) = 1e3 (seen on the demo: samples diverged).

    ``zonal_mixing`` (beyond the paper, off by default): after every residual block of the
    coarsest level, ``h += W mean_lon(h)``, the zonal mean of the features through a 1 x 1
    convolution (zero at start, so the network starts as the paper's), broadcast along the
    longitude: every point sees its whole latitude circle, at the cost of one small
    convolution. The draws of the study's networks lack variance most in the stratosphere's
    zonal mean (``prior_spread.py --bands``); as a lever on ``latent-none`` this path did not
    widen the prior (docs/benchmarks.md, training levers).

    Shapes: ``x (B, C, H, W)``, ``t (B,)`` or scalar in ``[0, 1]`` -> ``(B, C, H, W)``, with
    ``H`` and ``W`` divisible by ``2 ** (len(hidden) - 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: Sequence[int] = (64, 128, 256),
        blocks: Sequence[int] = (3, 3, 3),
        time_features: int = 64,
        time_hidden: int = 256,
        kernel_size: int = 3,
        zonal_mixing: bool = False,
    ):
        super().__init__()
        hidden, blocks = list(hidden), list(blocks)
        if len(hidden) != len(blocks) or not hidden:
            raise ValueError(
                f"hidden and blocks need one entry per level, got hidden={hidden}, blocks={blocks}"
            )
        self.levels = len(hidden)
        self.time_embedding = nn.Sequential(
            SinusoidalEmbedding(time_features),
            nn.Linear(time_features, time_hidden),
            nn.SiLU(),
            nn.Linear(time_hidden, time_features),
        )

        def stack(channels: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(
                ResidualBlock(channels, time_features, kernel_size) for _ in range(count)
            )

        self.head = PeriodicConv2d(in_channels, hidden[0], kernel_size)
        self.encoder = nn.ModuleList(stack(c, n) for c, n in zip(hidden, blocks, strict=True))
        self.downsample = nn.ModuleList(
            PeriodicConv2d(hidden[i], hidden[i + 1], kernel_size, stride=2)
            for i in range(self.levels - 1)
        )
        # Decoder level i (i < levels - 1): upsample from level i + 1, merge the skip.
        self.upsample = nn.ModuleList(
            PeriodicConv2d(hidden[i + 1], hidden[i], kernel_size) for i in range(self.levels - 1)
        )
        self.merge = nn.ModuleList(
            PeriodicConv2d(2 * hidden[i], hidden[i], kernel_size) for i in range(self.levels - 1)
        )
        self.decoder = nn.ModuleList(stack(hidden[i], blocks[i]) for i in range(self.levels - 1))
        self.tail = PeriodicConv2d(hidden[0], in_channels, kernel_size)
        self.zonal = nn.ModuleList()
        if zonal_mixing:  # one per block of the coarsest level (see the class docstring)
            for _ in range(blocks[-1]):
                mix = nn.Conv2d(hidden[-1], hidden[-1], 1)
                nn.init.zeros_(mix.weight)
                nn.init.zeros_(mix.bias)
                self.zonal.append(mix)
        # Preconditioned output (see the class docstring).
        self.sde = VPSDE()
        self.skip = nn.Linear(time_features, in_channels)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        factor = 2 ** (self.levels - 1)
        height, width = x.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"ScoreUNet with {self.levels} levels needs H and W divisible by {factor}, "
                f"got H={height}, W={width}; choose a grid or fewer levels that fit"
            )
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])
        embedding = self.time_embedding(t)
        if is_channels_last(self.head.weight):  # slams.models.for_sampling: all of it so
            x = x.contiguous(memory_format=torch.channels_last)

        h = self.head(x)
        skips = []
        for level, blocks in enumerate(self.encoder):
            for index, block in enumerate(blocks):
                h = block(h, embedding)
                if self.zonal and level == self.levels - 1:
                    h = h + self.zonal[index](h.mean(dim=-1, keepdim=True))
            if level < self.levels - 1:
                skips.append(h)
                h = self.downsample[level](h)
        for level in reversed(range(self.levels - 1)):
            h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = self.merge[level](torch.cat([h, skips[level]], dim=1))
            for block in self.decoder[level]:
                h = block(h, embedding)
        # No normalisation before the tail: a per-pixel LayerNorm would erase the amplitude
        # that eps must carry.
        mu = self.sde.mu(t).reshape(-1, 1, 1, 1)
        sigma = self.sde.sigma(t).reshape(-1, 1, 1, 1)
        signal = mu / torch.sqrt(mu**2 + sigma**2)  # ~1e-3 at t = 1, ~1 at t = 0
        residual = self.tail(h) + self.skip(embedding)[..., None, None] * x
        return sigma / (mu**2 + sigma**2) * x + signal * residual
