"""The assimilation methods: one module per family, one shape for all.

Every family module (``climatology``, ``oi``, ``pixel``, ``latent``) has
``analyse(method, observations, context) -> (ensemble_k, attrs)``: from the observed fields
the method assimilates (:func:`observed_fields`, a subset of
:class:`slams.observations.Observations`' fields) to the ensemble in kelvin ``(M, T, L, H, W)``
and the attributes its analysis file records;

and may have ``paper_latents(method, context)``: the encoded truth the ``paper`` protocol
observes (latent methods only). :data:`METHODS` says, without importing torch, what the
workflow needs to know of each method; adding a method is one entry here and its family's
code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

PROTOCOLS = ("paper", "physical")


@dataclass(frozen=True)
class MethodSpec:
    """What the workflow needs to know of a method.

    ``family``: its module under :mod:`slams.methods`. ``observes``: the fields it
    assimilates under the ``physical`` protocol. ``protocols``: where it is defined.
    ``protocol_free``: it observes the same fields in the same way under every protocol, so
    its analyses are identical and computed once. ``space``: the score network it samples
    with (``score-<space>.pt``), if any. ``modalities``: its autoencoder's modality set, if any.
    """

    family: str
    observes: tuple[str, ...] = ("t",)
    protocols: tuple[str, ...] = PROTOCOLS
    protocol_free: bool = False
    space: str | None = None
    modalities: str | None = None


METHODS: dict[str, MethodSpec] = {
    "pixel": MethodSpec("pixel", protocol_free=True, space="pixel"),
    # beyond the paper: a pixel-space prior over temperature, precipitation and OLR that
    # observes all three directly; defined only where precipitation and OLR are observations
    "pixel-both": MethodSpec(
        "pixel", observes=("t", "precip", "olr"), protocols=("physical",), space="pixel-both"
    ),
    **{
        f"latent-{m}": MethodSpec(
            "latent", observes=("t", *fields), space=f"latent-{m}", modalities=m
        )
        for m, fields in (
            ("none", ()),
            ("insitu", ("precip",)),
            ("exsitu", ("olr",)),
            ("both", ("precip", "olr")),
        )
    },
    "oi": MethodSpec("oi", protocol_free=True),
    # beyond the paper: OI over the joint stack of temperature, precipitation and OLR with the
    # training years' joint covariance, observing what pixel-both and latent-both observe: the
    # linear control that says how much precipitation and OLR tell about temperature
    "oi-both": MethodSpec("oi", observes=("t", "precip", "olr"), protocols=("physical",)),
    "climatology": MethodSpec("climatology", observes=(), protocol_free=True),
}
# Views of the table, in its order.
DIFFUSION_METHODS = tuple(m for m, spec in METHODS.items() if spec.space is not None)
LATENT_METHODS = tuple(m for m, spec in METHODS.items() if spec.modalities is not None)
MODALITY_SETS = tuple(METHODS[m].modalities for m in LATENT_METHODS)
# The score networks (``score-<space>.pt``), each once.
SCORE_NETWORKS = tuple(dict.fromkeys(METHODS[m].space for m in DIFFUSION_METHODS))


def score_network(config: dict, space: str) -> dict:
    """The U-Net settings (``hidden``, ``blocks``) of the score network ``space``: a
    pixel-space network's (``pixel``, ``pixel-both``) are ``score.pixel``, a latent one's
    ``score.latent``."""
    spec = METHODS[next(m for m in DIFFUSION_METHODS if METHODS[m].space == space)]
    return config["score"]["latent" if spec.modalities is not None else "pixel"]


def observed_fields(method: str, protocol: str) -> tuple[str, ...]:
    """The observed fields ``method`` assimilates under ``protocol``: its physical fields, or
    under ``paper`` the latent code ``z`` for a latent method (the encoded truth)."""
    spec = METHODS[method]
    if protocol == "paper" and spec.modalities is not None:
        return ("z",)
    return spec.observes


def family(method: str) -> ModuleType:
    """The module that implements ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return importlib.import_module(f"slams.methods.{METHODS[method].family}")
