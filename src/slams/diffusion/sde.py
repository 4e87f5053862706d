"""Variance-preserving SDE with SDA's cosine schedule, and the denoising score-matching loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class VPSDE:
    """Perturbation kernel ``p(x(t) | x) = N(mu(t) x, sigma(t)^2 I)`` for ``t in [0, 1]``.

    ``mu(t) = cos(acos(sqrt(eta)) t)^2`` and ``sigma(t) = sqrt(1 - mu(t)^2 + eta^2)``.

    Endpoints: ``mu(0) = 1, sigma(0) = eta`` (almost clean data) and ``mu(1) = eta``
    (``cos(acos(sqrt(eta)))^2 = sqrt(eta)^2``), ``sigma(1) = 1`` (almost pure noise). Both
    are bounded below by ``eta`` on ``[0, 1]``, so ``1 / mu`` and ``1 / sigma`` stay finite
    (at most ``1 / eta = 1e3`` for the default ``eta``); ``t`` is clamped to ``[0, 1]`` so
    this also holds for slightly out-of-range inputs.
    """

    def __init__(self, eta: float = 1e-3):
        if not 0.0 < eta < 1.0:
            raise ValueError(f"VPSDE needs 0 < eta < 1, got eta={eta}")
        self.eta = eta
        self.angle = math.acos(math.sqrt(eta))

    def mu(self, t: Tensor | float) -> Tensor:
        """``mu(t) = cos(acos(sqrt(eta)) t)^2``, elementwise, same shape as ``t``."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return torch.cos(self.angle * t.clamp(0.0, 1.0)) ** 2

    def sigma(self, t: Tensor | float) -> Tensor:
        """``sigma(t) = sqrt(1 - mu(t)^2 + eta^2)``, elementwise, same shape as ``t``."""
        # 1 - mu^2 >= 0 mathematically; clamping guards against rounding below zero.
        return torch.sqrt((1 - self.mu(t) ** 2).clamp(min=0.0) + self.eta**2)

    def __repr__(self) -> str:
        return f"VPSDE(eta={self.eta})"


# Loss weightings of the denoising score-matching loss across noise levels (``denoising_loss``).
LOSS_WEIGHTINGS = ("uniform", "min-snr")
# Hang et al. (2023), "Efficient diffusion training via min-SNR weighting strategy": gamma = 5.
MIN_SNR_GAMMA = 5.0


def loss_weight(sde: VPSDE, t: Tensor, weighting: str = "uniform") -> Tensor:
    """The weight of the noise-prediction error at ``t`` (shape of ``t``): 1 for ``uniform``
    (the paper's eq. 5); ``min(1, gamma / snr(t))`` for ``min-snr``, ``snr = mu^2 / sigma^2``,
    ``gamma = 5`` (:data:`MIN_SNR_GAMMA`): the data-prediction error weighted by
    ``min(snr, gamma)``, which lowers the weight of the low noise levels (``snr > 5``,
    ``t < ~0.2`` here) against the high ones that set the large scales and the spread."""
    if weighting == "uniform":
        return torch.ones_like(t)
    if weighting == "min-snr":
        snr = (sde.mu(t) / sde.sigma(t)) ** 2
        return (MIN_SNR_GAMMA / snr).clamp(max=1.0)
    raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def denoising_loss(
    eps_net: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sde: VPSDE | None = None,
    generator: torch.Generator | None = None,
    weighting: str = "uniform",
    input_perturbation: float = 0.0,
) -> Tensor:
    """Denoising score-matching loss (paper eq. 5), a scalar:

    ``mean w(t) ||eps_net(mu(t) x + sigma(t) eps, t) - eps||^2`` with ``t ~ U(0, 1)`` per
    batch member and ``eps ~ N(0, I)``; the mean runs over batch members and elements.
    ``w``: :func:`loss_weight` (``uniform``, 1, is the paper's).

    ``input_perturbation = gamma`` (beyond the paper; 0, the default, is the paper's loss):
    the network's input is noised by ``sigma(t) (eps + gamma xi)``, ``xi ~ N(0, I)``, while its
    target stays ``eps`` (Ning et al. 2023, "Input perturbation reduces exposure bias in
    diffusion models"): the network learns inputs a little noisier than their level, as the
    sampler's own states are, and to leave that extra noise in.

    ``x`` is ``(B, ...)`` (e.g. Markov-blanket windows ``(B, K*C, H, W)``); ``eps_net``
    receives ``x(t)`` of the same shape and ``t`` of shape ``(B,)``. ``sde`` defaults to
    ``VPSDE()``. ``generator`` (on ``x``'s device) makes ``t`` and ``eps`` reproducible.
    """
    sde = sde if sde is not None else VPSDE()
    t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    shape = (-1,) + (1,) * (x.ndim - 1)
    noise = eps
    if input_perturbation:  # drawn after eps, so that the paper's loss draws what it drew
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        noise = eps + input_perturbation * xi
    x_t = sde.mu(t).reshape(shape) * x + sde.sigma(t).reshape(shape) * noise
    error = (eps_net(x_t, t) - eps).square()
    if weighting == "uniform":  # the paper's, bit for bit as before
        return error.mean()
    return (loss_weight(sde, t, weighting).reshape(shape) * error).mean()
