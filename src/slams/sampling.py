"""The machinery the method families share (:mod:`slams.methods`), below all of them: what a
method may use besides its observations (:class:`Context`), the sampler's settings, the period
of a split, and :func:`assimilate_states`: guided sampling of the whole period through the
Markov-blanket score, with one Gaussian likelihood of whichever fields the method observes.
:mod:`slams.assimilate` runs a cell on top of the methods; nothing here imports either.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.diffusion.sampler import SOLVERS

# A zero observation variance makes the likelihood singular at t -> 0 (the gamma term vanishes);
# this floor keeps the guidance finite and is far below every variance of the ablation grid.
MIN_OBSERVATION_VARIANCE = 1e-3


@dataclass
class SamplerSettings:
    """Reverse-SDE sampler and likelihood guidance (config ``assimilation.sampler``).

    ``guidance``: ``sda`` (the paper's, with the ``gamma`` stability term) or ``mmps``
    (moment matching through ``cg_iterations`` conjugate-gradient iterations; ``gamma`` unused).
    ``solver``: the predictor (:func:`slams.diffusion.sampler.sample`). ``correction_min_sigma``:
    corrections only at noise levels at least this. ``tau_reference_steps``: the Langevin step
    of a correction is ``tau * tau_reference_steps / steps`` (:attr:`step_tau`), so that the
    total Langevin time does not grow with the steps (``None``: ``tau`` per step, the paper's).
    ``correction_grid_steps``: corrections only where the steps reach the times of a grid of
    this many steps, so that more steps refine the predictor without adding corrections
    (``None``: after every step, the paper's); ``tau_reference_steps`` then scales by the
    grid's step count instead of ``steps``.
    """

    steps: int = 512
    corrections: int = 1
    tau: float = 0.5
    gamma: float = 1e-2
    guidance: str = "sda"
    cg_iterations: int = 3
    solver: str = "ddim"
    correction_min_sigma: float = 0.0
    tau_reference_steps: int | None = None
    correction_grid_steps: int | None = None

    def __post_init__(self):
        if self.guidance not in ("sda", "mmps"):
            raise ValueError(f"guidance must be 'sda' or 'mmps', got {self.guidance!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.tau_reference_steps is not None and self.tau_reference_steps < 1:
            raise ValueError(f"tau_reference_steps must be >= 1, got {self.tau_reference_steps}")
        if self.correction_grid_steps is not None and self.correction_grid_steps < 1:
            raise ValueError(
                f"correction_grid_steps must be >= 1, got {self.correction_grid_steps}"
            )

    @property
    def step_tau(self) -> float:
        """The Langevin step of one correction: ``tau``, or with ``tau_reference_steps`` set,
        ``tau * tau_reference_steps / steps``, so that the corrections' total Langevin time is
        that of ``tau_reference_steps`` steps whatever the step count; with
        ``correction_grid_steps = N`` as well, ``tau * tau_reference_steps / min(steps, N)``
        (the corrections are those of ``min(steps, N)`` steps)."""
        if self.tau_reference_steps is None:
            return self.tau
        corrected = self.steps
        if self.correction_grid_steps is not None:
            corrected = min(self.steps, self.correction_grid_steps)
        return self.tau * self.tau_reference_steps / corrected

    def sample_options(self) -> dict:
        """The keyword arguments of :func:`slams.diffusion.sample` that these settings set."""
        return {
            "steps": self.steps,
            "corrections": self.corrections,
            "tau": self.step_tau,
            "solver": self.solver,
            "correction_min_sigma": self.correction_min_sigma,
            "correction_grid_steps": self.correction_grid_steps,
        }

    def make_guidance(self, observe, y: Tensor, variance: Tensor | float, mask=None, days=None):
        if self.guidance == "mmps":
            return MomentMatchingGuidance(
                observe, y, variance, mask, cg_iterations=self.cg_iterations, days=days
            )
        return GaussianGuidance(observe, y, variance, mask, gamma=self.gamma, days=days)


@dataclass
class Context:
    """What a method may use besides the observations: the trained models' files
    (``paths``), the dataset's statistics and the climatology of the assimilated days
    ``(T, L, H, W)`` in K, the sampler, ensemble and device; ``window_days`` (``None``: the
    whole period in one pass) and ``chunk``, the most Markov-blanket windows per network
    call."""

    paths: Mapping[str, str]
    stats: dict
    climatology_k: np.ndarray
    sampler: SamplerSettings
    members: int = 1
    window_days: int | None = None
    window: int = 5
    chunk: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    period: list[str] | None = None
    progress: bool = True
    decoder_error: bool = True
    decoder_residuals: bool = True


def sampler_attrs(context: Context) -> dict:
    """The sampler settings an analysis file records (diffusion methods)."""
    sampler = context.sampler
    return {
        "window_days": context.window_days,
        "steps": sampler.steps,
        "corrections": sampler.corrections,
        "tau": sampler.tau,
        "gamma": sampler.gamma if sampler.guidance == "sda" else 0.0,
        "guidance": sampler.guidance,
        "solver": sampler.solver,
        "correction_min_sigma": sampler.correction_min_sigma,
        "tau_reference_steps": sampler.tau_reference_steps or 0,
        "correction_grid_steps": sampler.correction_grid_steps or 0,
        "step_tau": sampler.step_tau,
        "cg_iterations": sampler.cg_iterations if sampler.guidance == "mmps" else 0,
    }


def window_slices(n_days: int, window_days: int, min_days: int) -> list[slice]:
    """Cut ``n_days`` into consecutive windows of about ``window_days``, none shorter than
    ``min_days`` (a short remainder is merged into the previous window)."""
    if n_days < min_days:
        raise ValueError(
            f"the assimilation period has {n_days} days, fewer than the score window {min_days}"
        )
    bounds = [*range(0, n_days, window_days), n_days]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_days:
        bounds.pop(-2)
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def window_likelihood(observations, start: int, stop: int, state_fields: Callable):
    """``(observe, y, variance, mask, days)`` of the observed days of days ``start .. stop -
    1``, or ``None`` if none is observed there; ``days`` lists them (counted from ``start``),
    the only days ``observe`` reads.

    ``state_fields(x)`` maps a state of the observed days ``(B, n, C, H, W)`` to the full
    field of every observed quantity (``{"t": ..., "precip": ...}``, each ``(B, n, C_f, H,
    W)``); ``observe(x)`` takes a window ``(B, L, C, H, W)`` to the flat vector of all
    observations ``(B, N)``, in the order of ``y``, ``variance`` and ``mask`` ``(N,)``. One
    Gaussian likelihood, every term with its own variance (floored at
    :data:`MIN_OBSERVATION_VARIANCE`).
    """
    local, fields = observations.window(start, stop)
    if len(local) == 0 or not fields:
        return None
    names = list(fields)
    y = torch.cat([fields[n].values.flatten() for n in names])
    mask = torch.cat([fields[n].mask.flatten() for n in names])
    variance = torch.cat(
        [
            fields[n].variance.clamp(min=MIN_OBSERVATION_VARIANCE).expand_as(fields[n].values)
            .flatten()
            for n in names
        ]
    )  # fmt: skip
    operators = {n: fields[n].operator for n in names}

    def observe(x: Tensor) -> Tensor:
        full = state_fields(x[:, local])
        return torch.cat([operators[n](full[n]).flatten(1) for n in names], dim=1)

    return observe, y, variance, mask, local.tolist()


def assimilate_states(
    denoiser: MarkovBlanketDenoiser,
    observations,
    state_fields: Callable,
    state_shape: tuple[int, int, int],
    context: Context,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``context.members`` analyses of the whole period.

    ``observations`` holds the fields the method assimilates; ``state_fields`` maps states of
    the observed days to them (see :func:`window_likelihood`). Returns ``(M, T, C, H, W)``
    in the state's units. By default (``context.window_days`` 0 or ``None``) the whole period
    is one guided sampling of ``(M, T, C, H, W)`` through the Markov blanket, so that every
    observation reaches every day the prior links it to; with ``window_days`` (the paper: 29)
    it is cut into windows sampled independently, each without the observations of the
    others. A window without any observed day is sampled from the prior alone. ``generator``
    defaults to one seeded with ``context.seed + 1``.
    """
    sde = VPSDE()
    device = context.device
    settings = context.sampler
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(context.seed + 1)
    n_days = observations.observed.shape[0]
    slices = window_slices(n_days, context.window_days or n_days, denoiser.window)
    # the analysis itself, filled window by window (one pass: the sampler's own state)
    ensemble = None if len(slices) == 1 else torch.empty(context.members, n_days, *state_shape)
    for window in slices:
        shape = (context.members, window.stop - window.start, *state_shape)
        likelihood = window_likelihood(observations, window.start, window.stop, state_fields)
        if likelihood is None:
            eps_fn = denoiser
        else:
            observe, y, variance, mask, days = likelihood
            guidance = settings.make_guidance(
                observe, y.to(device), variance.to(device), mask.to(device), days
            )

            def eps_fn(x: Tensor, t: Tensor, guidance=guidance) -> Tensor:
                return guidance.guided_eps(denoiser, x, t, sde)

        x = sample(
            eps_fn,
            shape,
            sde,
            **settings.sample_options(),
            generator=generator,
            device=device,
            progress=context.progress,
        )
        if ensemble is None:
            return x.detach().cpu()
        ensemble[:, window] = x.detach()
        del x
    return ensemble


def select_period(ds: xr.Dataset, period: list[str] | None) -> xr.Dataset:
    """The days of ``period`` (inclusive ``[first, last]``; ``None``: all) of a split file."""
    if period is None:
        return ds
    selected = ds.sel(time=slice(period[0], period[1]))
    if selected.sizes["time"] == 0:
        raise ValueError(
            f"assimilation.period {period[0]}..{period[1]} holds no day of the test split"
        )
    return selected
