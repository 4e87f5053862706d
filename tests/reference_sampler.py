"""The sampler as it was before it worked in place (every update a new tensor, the noise of a
whole step drawn at once): the oracle of ``test_lean_sampler.py``, which checks that the lean
sampler gives the same numbers to float32 rounding. Not used by the workflow."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from slams.diffusion.sampler import corrected_steps
from slams.diffusion.sde import VPSDE

_MIN_MEAN_SQUARE = 1e-4
SOLVERS = ("ddim", "dpm2m")


def _randn(shape: tuple, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``, so
    that a seeded CPU generator gives the same numbers whatever device the sampler runs on."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def reference_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    shape: tuple,
    sde: VPSDE,
    steps: int = 512,
    corrections: int = 1,
    tau: float = 0.5,
    generator: torch.Generator | None = None,
    device=None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    solver: str = "ddim",
    correction_min_sigma: float = 0.0,
    correction_grid_steps: int | None = None,
) -> Tensor:
    """Draw ``x(0)`` by integrating the reverse SDE from ``x(1) ~ N(0, I)`` (paper eqs. 10-11).

    With ``steps`` uniform steps ``s = t_i -> t = t_(i+1)`` from ``t = 1`` to ``0``, writing
    ``mu``, ``sigma`` for the schedule, ``x0(x, s) = (x - sigma(s) eps(x, s)) / mu(s)`` for the
    data prediction, ``lambda = log(mu / sigma)`` and ``h = lambda(t) - lambda(s) > 0``:

    - predictor ``solver="ddim"`` (first-order exponential integrator, the paper's):
      ``x <- r x + (sigma(t) - r sigma(s)) eps(x, s)``, ``r = mu(t) / mu(s)``, which is
      ``x <- (sigma(t) / sigma(s)) x + mu(t) (1 - e^-h) x0(x, s)``;
    - predictor ``solver="dpm2m"`` (DPM-Solver++(2M), Lu et al. 2022, multistep in the data
      prediction): the same update with ``x0`` replaced by
      ``D = (1 + 1 / (2 q)) x0_i - (1 / (2 q)) x0_(i-1)``, ``q = h_(i-1) / h_i``, where
      ``x0_(i-1)`` is the data prediction of the previous step (the first step is DDIM's).
      Second order at one network call per step, since it reuses the previous call. After
      Langevin corrections the slope ``x0_i - x0_(i-1)`` is taken along the previous step's
      deterministic segment instead (its end's data prediction comes from the first
      correction's call, before the Langevin noise), so that the correction's noise is not
      extrapolated into the next step: ``D = x0_i + (x0_end - x0_(i-1)) / (2 q)``;
    - ``corrections`` Langevin steps at ``t`` with the score ``-eps / sigma``:
      ``x <- x - delta sigma eps + sqrt(2 delta) sigma z``, ``delta = tau / mean(eps^2)``
      per batch member (mean over all non-batch elements), ``z ~ N(0, I)``; only at the
      steps where ``sigma(t) >= correction_min_sigma`` (0: at every step, the paper's) and,
      with ``correction_grid_steps = N``, only at the steps that reach the times ``1 - k / N``
      of an N-step grid (:func:`corrected_steps`): the corrections then stay where and as many
      as at N steps when the predictor takes more, so raising ``steps`` refines the predictor
      without changing the Langevin dynamics (``tau`` is per correction either way).

    The predictors take ``x0`` from ``eps_fn``, so a guided ``eps_fn`` (SDA or MMPS, through
    the Markov blanket, in chunks) works with either unchanged.

    ``eps_fn(x, t)`` gets ``x`` of ``shape`` (batch first) and ``t`` of shape ``(B,)``; it
    may be guided (it then enables autograd itself; the loop runs under ``no_grad``).

    Numerics: ``mu`` and ``sigma`` are bounded below by ``eta`` (``mu(1) = eta``,
    ``sigma(0) = eta``), so ``r <= 1 / eta`` is finite at every step. The largest ``r`` is
    the first step (``mu`` rises fastest near ``t = 1``): 1.2 for 512 steps, but ``1 / eta``
    for ``steps = 1``, where the update becomes Tweedie's ``x0 = (x - sigma eps) / mu`` and
    amplifies the network's error by ``1 / eta``; use many steps. ``mean(eps^2)`` is floored
    at 1e-4 so that a network predicting (almost) zero noise cannot produce an infinite
    Langevin step. The last correction runs at ``t = 0`` where ``sigma = eta``, so it only
    moves ``x`` by ``O(eta)``.

    ``generator`` makes the result reproducible (same seed -> identical output); noise is
    drawn on its device. ``dtype`` defaults to ``torch.get_default_dtype()``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if correction_grid_steps is not None and correction_grid_steps < 1:
        raise ValueError(f"correction_grid_steps must be >= 1, got {correction_grid_steps}")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    batch = shape[0]
    per_member = (batch,) + (1,) * (len(shape) - 1)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)

    def at(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t_batch = torch.full((batch,), float(t), dtype=dtype, device=device)
        # Schedule in float64: 1 - mu^2 near t = 0 cancels badly in float32.
        mu, sigma = (v.to(dtype=dtype, device=device) for v in (sde.mu(t), sde.sigma(t)))
        return t_batch, mu, sigma

    correct = corrected_steps(steps, correction_min_sigma, sde, correction_grid_steps)
    x = _randn(shape, generator, device, dtype)
    previous = None  # (x0 at the start of the last step's segment, its end's x0 or None, h)
    with torch.no_grad():
        for i in range(steps):
            t, mu, sigma = at(times[i])
            t_next, mu_next, sigma_next = at(times[i + 1])
            eps = eps_fn(x, t)
            if solver == "ddim":
                ratio = mu_next / mu
                x = ratio * x + (sigma_next - ratio * sigma) * eps
            else:
                x0 = (x - sigma * eps) / mu
                h = torch.log(mu_next / sigma_next) - torch.log(mu / sigma)
                direction = x0
                if previous is not None and i < steps - 1:
                    start, end, h_previous = previous
                    q = h_previous / h
                    change = (x0 if end is None else end) - start
                    direction = x0 + change / (2 * q)
                x = (sigma_next / sigma) * x - mu_next * torch.expm1(-h) * direction
                previous = (x0, None, h)
            if not correct[i]:
                continue
            for correction in range(corrections):
                eps = eps_fn(x, t_next)
                if solver == "dpm2m" and correction == 0:
                    # the data prediction at the segment's deterministic end, before the
                    # Langevin noise: the next step's slope, free of that noise
                    previous = (previous[0], (x - sigma_next * eps) / mu_next, previous[2])
                mean_square = eps.square().reshape(batch, -1).mean(dim=1)
                delta = (tau / mean_square.clamp(min=_MIN_MEAN_SQUARE)).reshape(per_member)
                z = _randn(shape, generator, device, dtype)
                x = x - delta * sigma_next * eps + torch.sqrt(2 * delta) * sigma_next * z
    return x
