"""Optimal interpolation (3D-Var with a static background): ``oi`` on the temperature
observations, ``oi-both`` on temperature, precipitation and OLR.

Background: the climatology with the covariance of the training years
(:class:`slams.baselines.Background`): of the temperature anomaly (``oi``), or of the joint
stack of the temperature anomaly levels, standardised ``log1p`` precipitation and standardised
OLR (``oi-both``: the joint EOFs plus the variance they leave out), so that precipitation and
OLR inform temperature exactly as far as their training-year covariance with it says. Each
observed day is analysed on its own, members by perturbed observations; days without
observations keep the background (members drawn from B).
"""

from __future__ import annotations

import torch

from slams.baselines import Background, OptimalInterpolation
from slams.data.dataset import from_anomaly
from slams.sampling import MIN_OBSERVATION_VARIANCE

# The channels of the oi-both state after the temperature levels, in order.
JOINT_FIELDS = ("precip", "olr")


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
