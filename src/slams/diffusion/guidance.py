"""Likelihood guidance for a Gaussian observation process (SDA / DPS, paper eqs. 6-9)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from slams.diffusion.sde import VPSDE


class GaussianGuidance:
    """Guided noise prediction for observations ``y = A(x) + noise``, noise of variance ``var_y``.

    With Tweedie's estimate ``x0_hat = (x - sigma eps) / mu`` the likelihood of the noised
    state is approximated by (paper eq. 9)

        ``log p(y | x(t)) ~= -1/2 sum mask * (y - A(x0_hat))^2 / (var_y + gamma sigma^2 / mu^2)``

    and the guided noise is ``eps - sigma * grad_x log p(y | x(t))`` (the score is
    ``-eps / sigma``). The gradient flows through the denoiser with autograd; the variance
    term is treated as a constant.

    ``observe`` maps a state batch shaped like ``x`` to observation space; ``y`` has that
    output shape (broadcastable over the batch). ``variance`` is a float or a per-point
    tensor broadcastable to ``y``, always a VARIANCE (not a standard deviation). ``mask``
    (broadcastable to ``y``; 1 observed, 0 not) removes points from the likelihood: masked
    points contribute nothing, even if ``y`` holds NaN there. ``gamma`` is the paper's
    stability constant.
    """

    def __init__(
        self,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        variance: Tensor | float,
        mask: Tensor | None = None,
        gamma: float = 1e-2,
    ):
        self.observe = observe
        self.gamma = gamma
        y = torch.as_tensor(y)
        variance = torch.as_tensor(variance, dtype=y.dtype, device=y.device)
        if mask is None:
            mask = torch.ones_like(y, dtype=torch.bool)
        mask = torch.as_tensor(mask, device=y.device).bool()
        shape = torch.broadcast_shapes(y.shape, mask.shape, variance.shape)
        self.mask = mask.expand(shape)
        # Unobserved points get finite placeholders so that NaN data or zero variance there
        # cannot leak into the value or the gradient (0 * NaN is NaN).
        self.y = torch.where(self.mask, y.expand(shape), torch.zeros((), dtype=y.dtype))
        self.variance = torch.where(
            self.mask, variance.expand(shape), torch.ones((), dtype=y.dtype)
        )
        if (self.variance < 0).any():
            raise ValueError("observation variance must be non-negative")
        if gamma <= 0 and (self.variance == 0).any():
            raise ValueError("zero observation variance needs gamma > 0 to keep it finite")

    def log_likelihood(self, x0_hat: Tensor, t: Tensor, sde: VPSDE) -> Tensor:
        """``-1/2 sum mask (y - A(x0_hat))^2 / (var_y + gamma sigma^2 / mu^2)``, a scalar
        summed over the batch (batch members are independent, so the gradient of the sum is
        the per-member gradient)."""
        predicted = self.observe(x0_hat)
        per_member = (-1,) + (1,) * (predicted.ndim - 1)
        ratio = (sde.sigma(t) / sde.mu(t)).to(predicted).reshape(per_member)
        y, variance, mask = (
            self.y.to(predicted),
            self.variance.to(predicted),
            self.mask.to(predicted.device),
        )
        residual = torch.where(mask, y - predicted, torch.zeros((), dtype=predicted.dtype))
        return -0.5 * (residual.square() / (variance + self.gamma * ratio**2)).sum()

    def guided_eps(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        t: Tensor,
        sde: VPSDE,
    ) -> Tensor:
        """``eps_phi(x, t) - sigma(t) grad_x log p(y | x(t))``, detached, shaped like ``x``.

        ``t`` is a scalar or ``(B,)``. Works whether or not ``x`` requires grad: the gradient
        is taken with respect to a detached copy, inside ``torch.enable_grad()`` so that it
        also works within the sampler's ``torch.no_grad()``.
        """
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])
        per_member = (-1,) + (1,) * (x.ndim - 1)
        mu, sigma = sde.mu(t).reshape(per_member), sde.sigma(t).reshape(per_member)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = denoiser(x, t)
            x0_hat = (x - sigma * eps) / mu
            (score,) = torch.autograd.grad(self.log_likelihood(x0_hat, t, sde), x)
        return (eps - sigma * score).detach()
