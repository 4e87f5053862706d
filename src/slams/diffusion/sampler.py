"""Predictor-corrector sampler of the reverse SDE (exponential integrator or DPM-Solver++(2M),
plus Langevin corrections)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from slams.diffusion.sde import VPSDE

# Floor of mean(eps^2) in the Langevin step size tau / mean(eps^2). A trained network's
# eps has mean square ~1; the floor only matters for degenerate predictions (e.g. a
# network that outputs zeros), where the step would otherwise be infinite.
_MIN_MEAN_SQUARE = 1e-4


def corrected_steps(
    steps: int, correction_min_sigma: float, sde: VPSDE, correction_grid_steps: int | None = None
) -> list[bool]:
    """Whether each of the ``steps`` steps ends with its corrections: where the noise level it
    steps to, ``sigma(t - dt)``, is at least ``correction_min_sigma`` (from the float64
    schedule, on the CPU), and, with ``correction_grid_steps = N`` set, where the step reaches
    or passes one of the ends ``t = 1 - k / N`` (k = 1 ... N) of an N-step grid: step ``i``
    (from ``1 - i / steps`` to ``1 - (i + 1) / steps``) if ``floor((i + 1) N / steps) >
    floor(i N / steps)``, in integers. With ``steps`` a multiple of N these are the steps that
    end on the grid's times, so the corrections run at the same noise levels, as many of them,
    whatever the step count; with ``steps <= N`` every step is corrected."""
    sigma = sde.sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[1:])
    above = (sigma >= correction_min_sigma).tolist()
    if correction_grid_steps is None:
        return above
    grid = correction_grid_steps
    on_grid = [(i + 1) * grid // steps > i * grid // steps for i in range(steps)]
    return [a and g for a, g in zip(above, on_grid, strict=True)]


def network_calls(
    steps: int, corrections: int, correction_min_sigma: float, correction_grid_steps: int | None
) -> int:
    """Guided evaluations of one :func:`sample`: one per step and ``corrections`` at each step
    :func:`corrected_steps` corrects (``correction_grid_steps`` 0 or ``None``: no grid). An
    analysis's time scales with it."""
    corrected = corrected_steps(steps, correction_min_sigma, VPSDE(), correction_grid_steps or None)
    return steps + corrections * sum(corrected)


def _randn(shape: tuple, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``, so
    that a seeded CPU generator gives the same numbers whatever device the sampler runs on."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def _randn_into(out: Tensor, generator: torch.Generator | None) -> Tensor:
    """:func:`_randn` written into ``out`` (the same numbers), without a second buffer where
    the generator lives on ``out``'s device."""
    source = generator.device if generator is not None else out.device
    if torch.device(source) == out.device:
        return torch.randn(out.shape, generator=generator, out=out)
    return out.copy_(_randn(tuple(out.shape), generator, out.device, out.dtype))


@dataclass(frozen=True)
class Level:
    """The schedule at one time ``t`` of the sampler's grid: ``mu(t)``, ``sigma(t)`` (from the
    float64 schedule, rounded to the sampling dtype) and ``lambda(t) = log(mu / sigma)``."""

    t: float
    mu: float
    sigma: float

    @classmethod
    def at(cls, sde: VPSDE, t: Tensor, dtype: torch.dtype) -> Level:
        # the schedule in float64: 1 - mu^2 near t = 0 cancels badly in float32
        return cls(float(t), float(sde.mu(t).to(dtype)), float(sde.sigma(t).to(dtype)))

    @property
    def log_snr(self) -> float:
        return math.log(self.mu / self.sigma)


class DDIM:
    """The paper's predictor, the first-order exponential integrator (DDIM), from ``s`` to
    ``t < s``:

        ``x <- r x + (sigma(t) - r sigma(s)) eps(x, s)``,  ``r = mu(t) / mu(s)``,

    which is ``x <- (sigma(t) / sigma(s)) x + mu(t) (1 - e^-h) x0(x, s)`` with the data
    prediction ``x0(x, s) = (x - sigma(s) eps) / mu(s)`` and ``h = lambda(t) - lambda(s)``.
    In place: ``x`` and ``eps`` are the only ensemble-sized tensors it touches."""

    def step(self, x: Tensor, eps: Tensor, s: Level, t: Level, last: bool) -> None:
        ratio = t.mu / s.mu
        x.mul_(ratio).add_(eps, alpha=t.sigma - ratio * s.sigma)

    def end_of_segment(self, x: Tensor, eps: Tensor, t: Level) -> None:
        """Nothing to remember (a one-step method)."""


class DPMSolver2M:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep in the data prediction, from ``s`` to
    ``t``: the DDIM update with ``x0`` replaced by

        ``D = x0_i + (x0_i - x0_(i-1)) / (2 q)``,  ``q = h_(i-1) / h_i``,

    ``x <- (sigma(t) / sigma(s)) x - mu(t) expm1(-h) D``, where ``x0_(i-1)`` is the previous
    step's data prediction; the first and the last step are DDIM's (``D = x0_i``). Second
    order at one network call per step. After Langevin corrections the slope ``x0_i -
    x0_(i-1)`` is taken along the previous step's deterministic segment instead (its end's
    data prediction comes from the first correction's call, before the Langevin noise; see
    :meth:`end_of_segment`), so that the correction's noise is not extrapolated into the next
    step: ``D = x0_i + (x0_end - x0_(i-1)) / (2 q)``.

    Memory: one ensemble-sized tensor of history (``x0_(i-1)``, or the slope ``x0_end -
    x0_(i-1)``), which :meth:`step` takes over from ``eps`` in place; the steps themselves
    work in place on ``x``, ``eps`` and the history."""

    def __init__(self) -> None:
        self.history: Tensor | None = None
        self.is_slope = False  # history holds x0_end - x0_(i-1) rather than x0_(i-1)
        self.h_previous = 0.0

    def step(self, x: Tensor, eps: Tensor, s: Level, t: Level, last: bool) -> None:
        h = t.log_snr - s.log_snr
        x0 = eps.mul_(-s.sigma).add_(x).div_(s.mu)  # eps's buffer now holds x0_i
        direction = x0
        if self.history is not None and not last:
            scale = self.h_previous / h * 2  # 2 q
            direction = self.history
            if self.is_slope:
                direction.div_(scale).add_(x0)
            else:
                direction.sub_(x0).div_(-scale).add_(x0)
        x.mul_(t.sigma / s.sigma).add_(direction, alpha=-t.mu * math.expm1(-h))
        self.history, self.is_slope, self.h_previous = x0, False, h

    def end_of_segment(self, x: Tensor, eps: Tensor, t: Level) -> None:
        """The first correction's ``eps`` at the segment's end ``t``: keep the slope
        ``x0_end - x0_i``, ``x0_end = (x - sigma(t) eps) / mu(t)``, in the history's buffer."""
        if self.history is not None:
            self.history.mul_(-t.mu).add_(x).sub_(eps, alpha=t.sigma).div_(t.mu)
            self.is_slope = True


PREDICTORS = {"ddim": DDIM, "dpm2m": DPMSolver2M}
SOLVERS = tuple(PREDICTORS)


class LangevinCorrector:
    """One Langevin step at ``t`` with the score ``-eps / sigma``:

        ``x <- x - delta sigma eps + sqrt(2 delta) sigma z``,  ``z ~ N(0, I)``,
        ``delta = tau / mean(eps^2)`` per batch member (mean over its non-batch elements),

    with ``mean(eps^2)`` floored at 1e-4, so that a network predicting (almost) zero noise
    cannot produce an infinite step. In place on ``x``; ``eps`` is spent (the noise ``z`` is
    drawn into its buffer)."""

    def __init__(self, tau: float, generator: torch.Generator | None):
        self.tau = tau
        self.generator = generator

    def step(self, x: Tensor, eps: Tensor, t: Level) -> None:
        batch = x.shape[0]
        per_member = (batch,) + (1,) * (x.ndim - 1)
        mean_square = torch.stack([member.square().mean() for member in eps])
        delta = (self.tau / mean_square.clamp(min=_MIN_MEAN_SQUARE)).reshape(per_member)
        x.addcmul_(eps, delta, value=-t.sigma)
        noise = _randn_into(eps, self.generator)
        x.addcmul_(noise, torch.sqrt(2 * delta), value=t.sigma)


def sample(
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
    eps_scale: float = 1.0,
) -> Tensor:
    """Draw ``x(0)`` by integrating the reverse SDE from ``x(1) ~ N(0, I)`` (paper eqs. 10-11).

    ``steps`` uniform steps ``s = t_i -> t = t_(i+1)`` from ``t = 1`` to ``0``, each a
    predictor step (``solver``: :class:`DDIM`, the paper's, or :class:`DPMSolver2M`) and
    then, where :func:`corrected_steps` says so, ``corrections`` steps of the
    :class:`LangevinCorrector` at ``t``: only at the steps where ``sigma(t) >=
    correction_min_sigma`` (0: at every step, the paper's) and, with ``correction_grid_steps
    = N``, only at the steps that reach the times ``1 - k / N`` of an N-step grid, so that
    raising ``steps`` refines the predictor without changing the Langevin dynamics (``tau``
    is per correction either way).

    ``eps_scale = k`` (beyond the paper; 1, the default, is off): the predictor divides the
    ``eps`` of ``eps_fn`` at ``s`` (guided where ``eps_fn`` is) by ``1 + (k - 1) s``, the
    epsilon scaling of Ning et al. (2024), "Elucidating the exposure bias in diffusion
    models": a network's ``eps`` on the sampler's own states is larger than on the noised data
    it was trained on, so its data prediction is shrunk; the scaling, largest at high noise and
    none at ``t = 0``, takes that back. The Langevin corrections keep the unscaled ``eps``.
    ``k`` is a tuned constant, not a derived one, and it widens an exact score's draws too
    (``tests/test_diffusion.py``).

    The predictors take ``x0`` from ``eps_fn``, so a guided ``eps_fn`` (SDA or MMPS, through
    the Markov blanket, in chunks) works with either unchanged. ``eps_fn(x, t)`` gets ``x``
    of ``shape`` (batch first) and ``t`` of shape ``(B,)``, returns a new tensor shaped like
    ``x`` (the sampler writes into it) and may be guided (it then enables autograd itself;
    the loop runs under ``no_grad``).

    Memory: the ensemble state ``x``, the network's output and, for DPM-Solver++(2M), one
    tensor of history: at most three ensemble-sized tensors at any time, besides what
    ``eps_fn`` holds while it runs; every update is in place.

    Numerics: ``mu`` and ``sigma`` are bounded below by ``eta`` (``mu(1) = eta``,
    ``sigma(0) = eta``), so ``r <= 1 / eta`` is finite at every step. The largest ``r`` is
    the first step (``mu`` rises fastest near ``t = 1``): 1.2 for 512 steps, but ``1 / eta``
    for ``steps = 1``, where the update becomes Tweedie's ``x0 = (x - sigma eps) / mu`` and
    amplifies the network's error by ``1 / eta``; use many steps. The last correction runs
    at ``t = 0`` where ``sigma = eta``, so it only moves ``x`` by ``O(eta)``.

    ``generator`` makes the result reproducible (same seed -> identical output); noise is
    drawn on its device. ``dtype`` defaults to ``torch.get_default_dtype()``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if correction_grid_steps is not None and correction_grid_steps < 1:
        raise ValueError(f"correction_grid_steps must be >= 1, got {correction_grid_steps}")
    if not eps_scale > 0:
        raise ValueError(f"eps_scale must be > 0, got {eps_scale}")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    batch = shape[0]
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    levels = [Level.at(sde, t, dtype) for t in times]
    predictor = PREDICTORS[solver]()
    corrector = LangevinCorrector(tau, generator)

    def eps_at(x: Tensor, level: Level) -> Tensor:
        return eps_fn(x, torch.full((batch,), level.t, dtype=dtype, device=device))

    def scale(level: Level) -> float:  # the predictor's eps = the network's / scale
        return 1.0 + (eps_scale - 1.0) * level.t

    correct = corrected_steps(steps, correction_min_sigma, sde, correction_grid_steps)
    x = _randn(shape, generator, device, dtype)
    with torch.no_grad():
        for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
            s, t = levels[i], levels[i + 1]
            eps = eps_at(x, s)
            if eps_scale != 1.0:
                eps.div_(scale(s))
            predictor.step(x, eps, s, t, last=i == steps - 1)
            del eps
            if not correct[i]:
                continue
            for correction in range(corrections):
                eps = eps_at(x, t)
                if correction == 0:
                    if eps_scale != 1.0:  # the predictor's slope takes the scaled eps
                        predictor.end_of_segment(x, eps.div_(scale(t)), t)
                        eps.mul_(scale(t))
                    else:
                        predictor.end_of_segment(x, eps, t)
                corrector.step(x, eps, t)
                del eps
    return x
