"""The exact Gaussian trajectory as the studies of the sampler use it
(``studies/gaussian_posterior.py``, ``studies/langevin_tradeoff.py``).

:class:`TrajectoryProblem`: a 12-day AR(1)-in-time (a = 0.8), smooth-in-space prior on a
4 x 8 grid (:class:`slams.diffusion.analytic.GaussianTrajectory`) whose exact window scores
are composed by the Markov blanket, observed on days 2, 5, 6 and 9 through 2 x 2 block means
with one block in four masked and an error variance of its own at every point; with its exact
posterior and the floor that as many exact posterior samples reach. :func:`timed_sample`: one
float64 ensemble of a sampler's settings, and its seconds.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from slams.assimilation import SamplerSettings
from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.diffusion.analytic import F64, GaussianTrajectory, posterior_agreement


def timed_sample(
    eps_fn, shape: tuple, settings: SamplerSettings, seed: int = 0
) -> tuple[Tensor, float]:
    """One float64 ensemble of ``shape`` by the sampler of ``settings`` (its noise seeded with
    ``seed``) and the seconds it took."""
    start = time.perf_counter()
    x = sample(eps_fn, shape, VPSDE(), **settings.sample_options(),
               generator=torch.Generator().manual_seed(seed), progress=False,
               dtype=F64)  # fmt: skip
    return x, time.perf_counter() - start


def sda_label(gamma: float) -> str:
    """``sda`` at the paper's ``gamma`` (1e-2), else ``sda-gamma<gamma>``."""
    return "sda" if gamma == 1e-2 else f"sda-gamma{gamma:g}"


class TrajectoryProblem:
    """The trajectory case (module docstring) with ``window``-day blanket windows: the guided
    noise predictions (``sda`` at the paper's ``gamma`` 1e-2, ``sda-gamma<g>`` at each other of
    ``gammas``, and ``mmps-gmres<iterations>`` and ``mmps-cg<iterations>``: MMPS with either
    Krylov solver), the exact posterior and the floor that ``members`` exact posterior samples
    reach (seed 0)."""

    def __init__(
        self,
        window: int = 5,
        members: int = 2000,
        iterations: int = 3,
        gammas: tuple[float, ...] = (1e-2,),
    ):
        self.sde = sde = VPSDE()
        self.prior = prior = GaussianTrajectory(length=12, height=4, width=8, sde=sde)
        self.case = case = prior.observation_case()
        local = case.observed.nonzero().flatten()

        def observe(x):
            return case.operator(x[:, local]).flatten(1)

        y, mask = case.y.flatten().double(), case.mask.flatten()
        variance = case.variance.flatten().double()
        self.denoiser = MarkovBlanketDenoiser(prior.window_net(window), window=window)
        self.members, self.window = members, window
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(members, prior.dim, dtype=F64, generator=generator)
        exact = case.mean + noise @ torch.linalg.cholesky(case.cov).T
        self.floor = self.agreement(exact)
        self.guidances = {
            sda_label(gamma): GaussianGuidance(observe, y, variance, mask, gamma=gamma)
            for gamma in gammas
        }
        for solver in ("gmres", "cg"):
            self.guidances[f"mmps-{solver}{iterations}"] = MomentMatchingGuidance(
                observe, y, variance, mask, iterations=iterations, linear_solver=solver
            )

    @property
    def shape(self) -> tuple:
        return (self.members, self.prior.length, *self.prior.state)

    def eps_fn(self, label: str = "sda"):
        guidance = self.guidances[label]
        return lambda x, t: guidance.guided_eps(self.denoiser, x, t, self.sde)

    def agreement(self, samples: Tensor) -> dict:
        flat = samples.reshape(len(samples), -1)
        return posterior_agreement(flat, torch.zeros_like(self.case.mean), self.case.mean,
                                   self.case.cov)  # fmt: skip
