"""An analytic Gaussian prior: exact noise prediction, exact samples and the exact (Kalman)
posterior of a linear-Gaussian observation. The reference the diffusion core is checked
against, in the tests and in ``studies/gaussian_posterior.py``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from slams.diffusion.sde import VPSDE

F64 = torch.float64


class GaussianPrior:
    """``x ~ N(m, S)`` on a ``(1, H, W)`` grid with a smooth, lon-periodic kernel.

    ``x(t) ~ N(mu m, Sigma_t)`` with ``Sigma_t = mu^2 S + sigma^2 I``, so the exact noise
    prediction is ``eps(x, t) = -sigma score = sigma Sigma_t^{-1} (x - mu m)``.
    """

    def __init__(
        self,
        height: int = 4,
        width: int = 8,
        length_scale: float = 1.5,
        sde: VPSDE | None = None,
    ):
        self.sde = sde if sde is not None else VPSDE()
        self.shape = (1, height, width)
        lat, lon = torch.meshgrid(
            torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij"
        )
        lat, lon = lat.flatten(), lon.flatten()
        dlon = torch.remainder(lon[:, None] - lon[None], width)
        dlon = torch.minimum(dlon, width - dlon)
        distance2 = (lat[:, None] - lat[None]) ** 2 + dlon**2
        # Smooth kernel plus a nugget: condition number ~200, like smooth weather fields.
        kernel = torch.exp(-distance2 / (2 * length_scale**2))
        self.cov = 0.9 * kernel + 0.1 * torch.eye(lat.numel(), dtype=F64)
        self.mean = torch.sin(2 * math.pi * lon / width) + 0.5 * lat / (height - 1)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact noise prediction ``E[eps | x(t)]`` for ``x (B, 1, H, W)``, ``t`` scalar or (B,)."""
        t = torch.as_tensor(t, dtype=F64).expand(x.shape[0])
        mu, sigma = self.sde.mu(t)[:, None], self.sde.sigma(t)[:, None]
        rotated = (x.reshape(x.shape[0], -1) - mu * self.mean) @ self.eigenvectors
        rotated = rotated / (mu**2 * self.eigenvalues + sigma**2)
        return (sigma * rotated @ self.eigenvectors.T).reshape(x.shape)

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact prior samples, flattened: ``(n, H * W)``."""
        z = torch.randn(n, self.dim, generator=generator, dtype=F64)
        return self.mean + (z * self.eigenvalues.sqrt()) @ self.eigenvectors.T

    def observation(
        self, operator: Callable[[Tensor], Tensor], variance: float, seed: int = 123
    ) -> Tensor:
        """``y = A(truth) + noise`` of variance ``variance`` for a seeded prior draw ``truth``."""
        generator = torch.Generator().manual_seed(seed)
        clean = operator(self.draw(1, generator).reshape(1, *self.shape))
        return clean + variance**0.5 * torch.randn(clean.shape, generator=generator, dtype=F64)

    def kalman(self, operator: Callable[[Tensor], Tensor], y: Tensor, variance: float):
        """Exact posterior ``N(m + K (y - A m), S - K A S)``, ``K = S A^T (A S A^T + v I)^-1``."""
        basis = torch.eye(self.dim, dtype=F64).reshape(self.dim, *self.shape)
        matrix = operator(basis).reshape(self.dim, -1).T  # A: (M, D)
        innovation_cov = matrix @ self.cov @ matrix.T + variance * torch.eye(
            matrix.shape[0], dtype=F64
        )
        gain = self.cov @ matrix.T @ torch.linalg.inv(innovation_cov)
        mean = self.mean + gain @ (y.flatten() - matrix @ self.mean)
        return matrix, mean, self.cov - gain @ matrix @ self.cov


def posterior_agreement(
    samples: Tensor, prior_mean: Tensor, post_mean: Tensor, post_cov: Tensor
) -> dict[str, float]:
    """How well an ensemble ``samples (n, D)`` matches an exact Gaussian posterior.

    - ``gap_closed``: ``1 - |ensemble mean - posterior mean| / |prior mean - posterior mean|``
      (1 is perfect, 0 is no better than the prior mean);
    - ``spread_ratio``: mean ensemble standard deviation over the mean exact posterior
      standard deviation (1 is perfect).
    """
    samples = samples.reshape(samples.shape[0], -1).to(F64)
    distance = (samples.mean(0) - post_mean).norm() / (prior_mean - post_mean).norm()
    spread = samples.std(0).mean() / post_cov.diag().sqrt().mean()
    return {"gap_closed": 1 - distance.item(), "spread_ratio": spread.item()}


class GaussianTrajectory:
    """A Gaussian trajectory prior: AR(1) in time, smooth in space, on an ``height x width``
    grid (one channel), zero mean and unit variance.

    ``x_d = a x_{d-1} + sqrt(1 - a^2) S^{1/2} e_d``, stationary, so any ``n`` consecutive
    days are ``N(0, T_n (x) S)`` with ``T_n[i, j] = a^|i - j|`` and ``S`` the spatial kernel of
    :class:`GaussianPrior`. :meth:`window_net` is the exact noise prediction of ``window``
    consecutive days (the network the workflow trains), for :class:`MarkovBlanketDenoiser`
    to compose; :meth:`posterior` the exact (Kalman) posterior of the whole trajectory given
    linear observations.
    """

    def __init__(
        self,
        length: int = 12,
        height: int = 4,
        width: int = 8,
        a: float = 0.8,
        length_scale: float = 1.5,
        sde: VPSDE | None = None,
    ):
        self.sde = sde if sde is not None else VPSDE()
        self.length, self.a = length, a
        self.state = (1, height, width)
        self.spatial = GaussianPrior(height, width, length_scale, self.sde).cov

    def temporal(self, n: int) -> Tensor:
        lag = torch.arange(n)
        return torch.tensor(self.a, dtype=F64) ** (lag[:, None] - lag[None]).abs()

    def covariance(self, n: int | None = None) -> Tensor:
        """The covariance of ``n`` (default all) consecutive days, ``(n D, n D)``."""
        return torch.kron(self.temporal(self.length if n is None else n), self.spatial)

    @property
    def dim(self) -> int:
        return self.length * self.spatial.shape[0]

    def window_net(self, window: int) -> torch.nn.Module:
        """The exact ``eps`` of windows ``(N, window, H, W)`` (channels = days), ``t (N,)``."""
        return _ExactWindows(self.covariance(window), self.sde)

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` trajectories ``(n, L, 1, H, W)``."""
        chol = torch.linalg.cholesky(self.covariance())
        z = torch.randn(n, self.dim, generator=generator, dtype=F64)
        return (z @ chol.T).reshape(n, self.length, *self.state)

    def posterior(self, observe: Callable[[Tensor], Tensor], y: Tensor, variance: Tensor):
        """Exact posterior mean and covariance of the flattened trajectory given
        ``y = observe(x) + noise`` of per-point ``variance`` (``observe`` linear, taking
        ``(n, L, 1, H, W)`` to ``(n, N)``; ``y`` and ``variance`` ``(N,)``)."""
        basis = torch.eye(self.dim, dtype=F64).reshape(self.dim, self.length, *self.state)
        matrix = observe(basis).T  # (N, D L)
        cov = self.covariance()
        innovation = matrix @ cov @ matrix.T + torch.diag(variance.to(F64))
        gain = cov @ matrix.T @ torch.linalg.inv(innovation)
        return gain @ y.to(F64), cov - gain @ matrix @ cov

    def observation_case(
        self, days: tuple[int, ...] = (2, 5, 6, 9), seed: int = 0, coarsen: int = 2
    ) -> TrajectoryCase:
        """A seeded truth observed on ``days`` through ``coarsen x coarsen`` block means, one
        block in four masked out, each point with its own error variance in [0.05, 0.3];
        with the exact posterior of the whole trajectory."""
        from slams.observations import MeasurementOperator

        generator = torch.Generator().manual_seed(seed)
        truth = self.draw(1, generator)[0].float()
        observed = torch.zeros(self.length, dtype=torch.bool)
        observed[list(days)] = True
        operator = MeasurementOperator(coarsen=coarsen)
        clean = operator(truth[observed])
        mask = torch.rand(clean.shape, generator=generator) > 0.25
        variance = 0.05 + 0.25 * torch.rand(clean.shape, generator=generator)
        y = clean + variance.sqrt() * torch.randn(clean.shape, generator=generator)

        def observe(x: Tensor) -> Tensor:
            return operator(x[:, observed])[:, mask]

        mean, cov = self.posterior(observe, y[mask].double(), variance[mask].double())
        return TrajectoryCase(observed, operator, y, mask, variance, mean, cov)


@dataclass
class TrajectoryCase:
    """Observations of a :class:`GaussianTrajectory` and its exact posterior: ``observed (L,)``
    days; ``y``, ``mask``, ``variance`` ``(n_observed, 1, h, w)``; ``operator`` one day's
    ``A``; ``mean (L D,)``, ``cov`` of the posterior (the prior mean is 0)."""

    observed: Tensor
    operator: Callable[[Tensor], Tensor]
    y: Tensor
    mask: Tensor
    variance: Tensor
    mean: Tensor
    cov: Tensor


class _ExactWindows(torch.nn.Module):
    """``eps = sigma Sigma_t^{-1} x`` of a zero-mean Gaussian window, ``Sigma_t = mu^2 C +
    sigma^2 I``, by the eigen-decomposition of ``C``; float64 inside, the input's dtype out."""

    def __init__(self, cov: Tensor, sde: VPSDE):
        super().__init__()
        self.sde = sde
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(cov)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=F64).expand(x.shape[0])
        mu, sigma = self.sde.mu(t)[:, None], self.sde.sigma(t)[:, None]
        rotated = x.reshape(x.shape[0], -1).to(F64) @ self.eigenvectors
        rotated = rotated / (mu**2 * self.eigenvalues + sigma**2)
        return (sigma * rotated @ self.eigenvectors.T).reshape(x.shape).to(x.dtype)
