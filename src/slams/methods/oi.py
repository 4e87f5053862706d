"""Optimal interpolation (3D-Var with a static background) on the temperature observations.

Background: the climatology with the covariance of the training-year anomalies
(:class:`slams.baselines.Background`); each observed day is analysed on its own, members by
perturbed observations; days without observations keep the background (members drawn from B).
"""

from __future__ import annotations

import torch

from slams.baselines import Background, OptimalInterpolation
from slams.data.dataset import from_anomaly
from slams.sampling import MIN_OBSERVATION_VARIANCE


def analyse(method, observations, context):
    t = observations.fields["t"]
    measurement = observations.measurement
    background = Background.load(context.paths["background"])
    operator = measurement.operator()
    # diag(A diag(residual) A^T): a block mean of n cells divides the residual variance by n
    diagonal = operator(background.residual[None])[0] / measurement.coarsen**2
    oi = OptimalInterpolation(
        background, operator, diagonal, t.variance.clamp(min=MIN_OBSERVATION_VARIANCE)
    )
    generator = torch.Generator().manual_seed(context.seed + 1)
    observed = observations.observed
    members = context.members
    analysis = background.sample(members * len(observed), generator).reshape(
        members, len(observed), *background.residual.shape
    )
    if observed.any():
        analysis[:, observed] = oi.ensemble(t.values, members, generator)
    attrs = {
        "background_rank": int(background.variances.shape[0]),
        "unobserved_days": "background: climatology, members drawn from B",
    }
    return from_anomaly(analysis.numpy(), context.climatology_k, context.stats), attrs
