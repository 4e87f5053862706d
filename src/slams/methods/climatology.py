"""The day-of-year climatology of the training years: the no-information reference."""

from __future__ import annotations


def analyse(method, observations, context):
    """One member, the climatology of each day (K)."""
    return context.climatology_k[None], {"members": 1}
