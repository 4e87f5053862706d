"""Optimal interpolation (3D-Var with a static background): ``oi`` on the temperature
observations, ``oi-both`` on temperature, precipitation and OLR.

OI works in the state space of the pixel method, the standardised anomaly about the
day-of-year climatology, and on the same observations. The background is the climatology
(anomaly 0) with the covariance of the training years (:class:`Background`)

    ``B = U diag(lambda) U^T + diag(d)``,

the leading ``rank`` empirical orthogonal functions of the training-year anomalies (found by a
randomised range finder in two streaming passes, :func:`estimate_background`, so memory does
not grow with the years) plus the variance they leave out at each point: of the temperature
anomaly (``oi``), or of the joint stack of the temperature anomaly levels, standardised
``log1p`` precipitation and standardised OLR (``oi-both``), so that precipitation and OLR
inform temperature exactly as far as their training-year covariance with it says.

Each observed day is analysed on its own (3-D, :class:`OptimalInterpolation`): ``x_a = K y``
with ``K = B H^T (H B H^T + R)^{-1}``, inverted through the Woodbury identity. Days without
observations keep the background: the climatology, with members drawn from ``B``. The ensemble
uses perturbed observations, ``x_i = x_b,i + K (y + e_i - H x_b,i)`` with ``x_b,i ~ N(0, B)``
and ``e_i ~ N(0, R)``: for a linear-Gaussian problem its members are exact draws from the
analysis distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from slams.assimilation import MIN_OBSERVATION_VARIANCE
from slams.data.dataset import from_anomaly

log = logging.getLogger(__name__)

# The channels of the oi-both state after the temperature levels, in order.
JOINT_FIELDS = ("precip", "olr")


@dataclass
class Background:
    """Static background covariance ``B = U diag(variances) U^T + diag(residual)``.

    ``modes (k, C, H, W)`` orthonormal (flattened), ``variances (k,)``, ``residual (C, H, W)``.
    """

    modes: Tensor
    variances: Tensor
    residual: Tensor

    def to(self, device) -> Background:
        return Background(*(v.to(device) for v in (self.modes, self.variances, self.residual)))

    def save(self, path) -> None:
        from slams.models import save_atomic  # one atomic writer for every .pt file

        save_atomic({k: getattr(self, k) for k in ("modes", "variances", "residual")}, path)

    @classmethod
    def load(cls, path) -> Background:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws from ``N(0, B)``: ``(n, C, H, W)``."""
        k = self.variances.shape[0]
        z = torch.randn(n, k, generator=generator, dtype=self.modes.dtype)
        shape = self.residual.shape
        low_rank = (z * self.variances.sqrt()) @ self.modes.reshape(k, -1)
        white = torch.randn(n, *shape, generator=generator, dtype=self.modes.dtype)
        return low_rank.reshape(n, *shape) + self.residual.sqrt() * white

    def dense(self) -> Tensor:
        """``B`` as a ``(D, D)`` matrix (small problems and tests only)."""
        u = self.modes.reshape(self.modes.shape[0], -1)
        return u.T @ (self.variances[:, None] * u) + torch.diag(self.residual.flatten())


def estimate_background(
    days: Callable[[], object],
    n_days: int,
    shape: tuple[int, int, int],
    rank: int,
    oversample: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> Background:
    """EOFs of the anomalies by a randomised range finder (Halko et al. 2011) in two passes.

    ``days()`` returns a fresh iterable of day batches ``(b, C, H, W)`` (float32 tensors,
    anomalies about the climatology, i.e. with mean ~0) covering the ``n_days`` training days
    in order. Pass 1: ``Y = X Omega`` with a Gaussian ``Omega (D, rank + oversample)`` and the
    second moment of every point; pass 2: ``Q^T X`` with ``Q`` an orthonormal basis of ``Y``;
    the SVD of that small matrix gives the modes and ``variance = singular value^2 / n_days``.
    """
    dim = int(np.prod(shape))
    width = min(rank + oversample, n_days, dim)
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(dim, width, generator=generator, dtype=torch.float64)
    sketch = torch.empty(n_days, width, dtype=torch.float64)
    second_moment = torch.zeros(dim, dtype=torch.float64)
    index = 0
    for batch in tqdm(days(), desc="background pass 1/2", disable=not progress, leave=False):
        flat = batch.reshape(batch.shape[0], -1).to(torch.float64)
        sketch[index : index + len(flat)] = flat @ omega
        second_moment += flat.square().sum(0)
        index += len(flat)
    if index != n_days:
        raise ValueError(f"expected {n_days} days, the data held {index}")
    basis, _ = torch.linalg.qr(sketch)
    projected = torch.zeros(width, dim, dtype=torch.float64)
    index = 0
    for batch in tqdm(days(), desc="background pass 2/2", disable=not progress, leave=False):
        flat = batch.reshape(batch.shape[0], -1).to(torch.float64)
        projected += basis[index : index + len(flat)].T @ flat
        index += len(flat)
    _, singular, vh = torch.linalg.svd(projected, full_matrices=False)
    k = min(rank, width)
    modes, variances = vh[:k], singular[:k] ** 2 / n_days
    explained = (variances[:, None] * modes.square()).sum(0)
    residual = (second_moment / n_days - explained).clamp(min=1e-6 * second_moment.mean() / n_days)
    log.info(
        "background: %d modes explain %.1f %% of the anomaly variance",
        k,
        100 * float(explained.sum() / (second_moment.sum() / n_days)),
    )
    return Background(
        modes.reshape(k, *shape).float(), variances.float(), residual.reshape(shape).float()
    )


def _adjoint(observe: Callable[[Tensor], Tensor], w: Tensor, shape: tuple) -> Tensor:
    """``A^T w`` of a linear ``observe`` by autograd: ``(n, *obs) -> (n, *shape)``."""
    with torch.enable_grad():
        x = torch.zeros(w.shape[0], *shape, dtype=w.dtype, requires_grad=True)
        (adjoint,) = torch.autograd.grad(observe(x), x, w)
    return adjoint


class OptimalInterpolation:
    """OI with the static ``background`` for one observation operator and error variance.

    ``observe`` is the linear ``A``: ``(n, C, H, W) -> (n, C, h, w)``; ``observation_diagonal``
    is ``diag(A diag(residual) A^T)`` ``(C, h, w)`` (for a block mean over ``n`` cells and a
    subsampling, ``A(residual) / n``); ``variance`` is the observation-error variance, a scalar
    or broadcastable to ``(C, h, w)``. The innovation covariance
    ``S = (A U) diag(lambda) (A U)^T + diag(A D A^T + R)`` is inverted through the Woodbury
    identity, so only ``rank x rank`` matrices are factorised.
    """

    def __init__(
        self,
        background: Background,
        observe: Callable[[Tensor], Tensor],
        observation_diagonal: Tensor,
        variance: Tensor | float,
    ):
        dtype = torch.float64
        self.observe = observe
        self.shape = tuple(background.residual.shape)
        self.background = background
        k = background.variances.shape[0]
        self.modes = background.modes.to(dtype).reshape(k, -1)
        self.lam = background.variances.to(dtype)
        self.residual = background.residual.to(dtype)
        self.hu = observe(background.modes.to(dtype)).reshape(k, -1)  # rows: A u_j
        self.obs_shape = tuple(observe(background.modes[:1].to(dtype)).shape[1:])
        self.obs_var = torch.as_tensor(variance, dtype=dtype).expand(self.obs_shape).reshape(-1)
        self.e = observation_diagonal.to(dtype).reshape(-1) + self.obs_var
        inner = torch.diag(1 / self.lam) + (self.hu / self.e) @ self.hu.T
        self.inner_chol = torch.linalg.cholesky(inner)

    def _solve(self, v: Tensor) -> Tensor:
        """``S^{-1} v`` for rows ``v (n, m)``."""
        ev = v / self.e
        correction = torch.cholesky_solve((ev @ self.hu.T).T, self.inner_chol).T  # (n, k)
        return ev - (correction @ self.hu) / self.e

    def gain(self, v: Tensor) -> Tensor:
        """``K v = B A^T S^{-1} v``: ``(n, m) -> (n, C, H, W)``."""
        w = self._solve(v)
        low_rank = ((w @ self.hu.T) * self.lam) @ self.modes
        adjoint = _adjoint(self.observe, w.reshape(-1, *self.obs_shape), self.shape)
        return low_rank.reshape(-1, *self.shape) + self.residual * adjoint

    def mean(self, y: Tensor) -> Tensor:
        """The analysis of each day, ``K y`` (the background mean is 0): ``(N, C, H, W)``."""
        return self.gain(y.to(torch.float64).reshape(y.shape[0], -1)).float()

    def ensemble(self, y: Tensor, members: int, generator: torch.Generator) -> Tensor:
        """Perturbed-observation members of each day: ``(M, N, C, H, W)``."""
        days = y.shape[0]
        y = y.to(torch.float64).reshape(days, -1)
        draws = self.background.sample(members * days, generator).to(torch.float64)
        noise = torch.randn(members * days, y.shape[1], generator=generator, dtype=torch.float64)
        perturbed = y.repeat(members, 1) + self.obs_var.sqrt() * noise
        innovation = perturbed - self.observe(draws).reshape(members * days, -1)
        return (draws + self.gain(innovation)).reshape(members, days, *self.shape).float()


def analyse(method, observations, context):
    background = Background.load(context.paths["background"])
    generator = torch.Generator().manual_seed(context.seed + 1)
    observed = observations.observed
    members = context.members
    analysis = background.sample(members * len(observed), generator).reshape(
        members, len(observed), *background.residual.shape
    )
    if observed.any():
        analyse_days = _joint_days if method == "oi-both" else _temperature_days
        analysis[:, observed] = analyse_days(background, observations, members, generator)
    attrs = {
        "background_rank": int(background.variances.shape[0]),
        "unobserved_days": "background: climatology, members drawn from B",
    }
    levels = context.climatology_k.shape[1]
    return from_anomaly(
        analysis[:, :, :levels].numpy(), context.climatology_k, context.stats
    ), attrs


def _temperature_days(background, observations, members, generator):
    """``oi``: the members of every observed day ``(M, D, L, H, W)``, one operator for all."""
    t = observations.fields["t"]
    measurement = observations.measurement
    operator = measurement.operator()
    # diag(A diag(residual) A^T): a block mean of n cells divides the residual variance by n
    diagonal = operator(background.residual[None])[0] / measurement.coarsen**2
    oi = OptimalInterpolation(
        background, operator, diagonal, t.variance.clamp(min=MIN_OBSERVATION_VARIANCE)
    )
    return oi.ensemble(t.values, members, generator)


def _joint_days(background, observations, members, generator):
    """``oi-both``: the members of every observed day ``(M, D, C, H, W)`` of the joint state.

    The observation vector of a day is ``A(t)`` (every level) followed by the precipitation
    and OLR values where they were observed. Days that share their precipitation and OLR
    masks share one operator (gauges and valid OLR rarely change), so one Woodbury
    factorisation serves each group.
    """
    t = observations.fields["t"]
    measurement = observations.measurement
    operator = measurement.operator()
    levels = background.residual.shape[0] - len(JOINT_FIELDS)
    residual = background.residual
    t_diagonal = (operator(residual[None, :levels])[0] / measurement.coarsen**2).flatten()
    t_variance = t.variance.clamp(min=MIN_OBSERVATION_VARIANCE).expand_as(t.values[0]).flatten()
    fields = [observations.fields[name] for name in JOINT_FIELDS]
    masks = torch.cat([f.mask[:, 0].flatten(1) for f in fields], dim=1).to(torch.uint8)
    patterns, group = torch.unique(masks, dim=0, return_inverse=True)
    days = t.values.shape[0]
    out = torch.empty(members, days, *residual.shape)
    for g, pattern in enumerate(patterns):
        rows = (group == g).nonzero().squeeze(1)
        where = [m.nonzero().squeeze(1) for m in pattern.reshape(len(fields), -1)]

        def observe(x, where=where):
            parts = [operator(x[:, :levels]).flatten(1)]
            for k, index in enumerate(where):
                parts.append(x[:, levels + k].flatten(1)[:, index])
            return torch.cat(parts, dim=1)

        diagonal = torch.cat(
            [t_diagonal, *(residual[levels + k].flatten()[i] for k, i in enumerate(where))]
        )
        variance = torch.cat(
            [t_variance, *(f.variance.clamp(min=MIN_OBSERVATION_VARIANCE).flatten().expand(len(i))
                           for f, i in zip(fields, where, strict=True))]
        )  # fmt: skip
        y = torch.cat(
            [t.values[rows].flatten(1),
             *(f.values[rows, 0].flatten(1)[:, i] for f, i in zip(fields, where, strict=True))],
            dim=1,
        )  # fmt: skip
        oi = OptimalInterpolation(background, observe, diagonal, variance)
        out[:, rows] = oi.ensemble(y, members, generator)
    return out


def background_of(
    train_path: str,
    rank: int,
    seed: int = 0,
    progress: bool = True,
    variables: tuple[str, ...] = ("t",),
) -> Background:
    """The background covariance of the training days (:func:`estimate_background`), streamed
    from the training split: of the temperature anomaly, or of the joint stack of
    ``variables`` (``oi-both``: temperature anomaly levels, standardised precipitation and
    OLR, stacked on channels in that order)."""
    from slams.data.samples import NetCDFSamples

    samples = NetCDFSamples(train_path, list(variables), np.arange(0))
    n_days = samples.n_days
    shape = (samples.channels, *samples.grid)

    def days():
        for start in range(0, n_days, 64):
            count = min(64, n_days - start)
            yield torch.from_numpy(samples.read(start, count))

    return estimate_background(days, n_days, shape, rank, seed=seed, progress=progress)
