"""Differentiable measurement operator A: coarsening, sparsity and Gaussian noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def observed_days(n_days: int, every: int) -> torch.BoolTensor:
    """``(n_days,)`` booleans: day ``i`` is observed iff ``i % every == 0``."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return torch.arange(n_days) % every == 0


class MeasurementOperator:
    """Linear observation operator ``A`` followed by additive Gaussian noise (paper 3.1, 4).

    ``A(x)``: block average over ``coarsen x coarsen`` cells (an unweighted mean of the grid
    cells, as in the paper's ablation; not area weighted), then keep every ``gap``-th
    coarse point in both directions, ``[..., ::gap, ::gap]``:
    ``(..., H, W) -> (..., ceil(H / coarsen / gap), ceil(W / coarsen / gap))``.
    ``y = A(x) + sqrt(noise_variance) * N(0, I)``: ``noise_variance`` is a VARIANCE.
    """

    def __init__(self, coarsen: int = 1, gap: int = 1, noise_variance: float = 0.0):
        if coarsen < 1 or gap < 1:
            raise ValueError(f"coarsen and gap must be >= 1, got coarsen={coarsen}, gap={gap}")
        if noise_variance < 0:
            raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")
        self.coarsen = coarsen
        self.gap = gap
        self.noise_variance = noise_variance

    def __call__(self, x: Tensor) -> Tensor:
        """``A(x)``, linear and differentiable: ``(..., H, W) -> (..., h, w)``."""
        *lead, height, width = x.shape
        c = self.coarsen
        if height % c or width % c:
            raise ValueError(
                f"coarsening factor {c} must divide the grid, got H={height}, W={width}"
            )
        coarse = x.reshape(*lead, height // c, c, width // c, c).mean(dim=(-3, -1))
        return coarse[..., :: self.gap, :: self.gap]

    def noisy(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``A(x) + sqrt(noise_variance) * N(0, I)``; noise drawn with ``generator``."""
        clean = self(x)
        source = generator.device if generator is not None else clean.device
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=source)
        return clean + self.noise_variance**0.5 * noise.to(clean.device)

    def upsample(self, y: Tensor, shape: Sequence[int]) -> Tensor:
        """Observations back on the state grid, for plotting: ``(..., h, w) -> (..., H, W)``.

        ``shape`` ends with ``(H, W)`` (a full state shape is fine). Each observed coarse
        cell fills its ``coarsen x coarsen`` block with its value; blocks of coarse points
        skipped by the gap are NaN.
        """
        height, width = shape[-2], shape[-1]
        c, gap = self.coarsen, self.gap
        coarse = torch.full(
            (*y.shape[:-2], height // c, width // c), float("nan"), dtype=y.dtype, device=y.device
        )
        expected = coarse[..., ::gap, ::gap].shape[-2:]
        if y.shape[-2:] != expected:
            raise ValueError(
                f"observations of shape {tuple(y.shape[-2:])} do not fit a grid of "
                f"{(height, width)} with coarsen={c}, gap={gap} (expected {tuple(expected)})"
            )
        coarse[..., ::gap, ::gap] = y
        return coarse.repeat_interleave(c, dim=-2).repeat_interleave(c, dim=-1)

    observed_days = staticmethod(observed_days)

    def __repr__(self) -> str:
        return (
            f"MeasurementOperator(coarsen={self.coarsen}, gap={self.gap}, "
            f"noise_variance={self.noise_variance})"
        )


@dataclass
class Measurement:
    """One ablation setting: block-average factor, spatial gap, noise variance, day stride."""

    coarsen: int = 1
    gap: int = 1
    noise: float = 0.0
    every: int = 1

    @classmethod
    def from_params(cls, params: dict) -> Measurement:
        return cls(
            coarsen=int(params["coarsen"]),
            gap=int(params["gap"]),
            noise=float(params["noise"]),
            every=int(params["every"]),
        )

    def operator(self) -> MeasurementOperator:
        return MeasurementOperator(coarsen=self.coarsen, gap=self.gap, noise_variance=self.noise)
