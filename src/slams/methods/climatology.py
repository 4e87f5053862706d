"""The day-of-year climatology of the training years: the no-information reference.

Its analysis of a day is the climatology of that day's day of year (K), one member:
``context.climatology_k``, which :func:`slams.data.dataset.climatology_of` reads from the
run's ``climatology.nc`` for every method.
"""

from __future__ import annotations


def analyse(method, observations, context):
    """One member, the climatology of each day (K): ``(1, T, L, H, W)``."""
    return context.climatology_k[None], {"members": 1}
