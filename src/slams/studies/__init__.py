"""What the study scripts (``studies/``: what the science shows) share.

- :mod:`slams.studies.sampler_choice`: the rule that picks a sampler from the measurements of
  ``studies/steps.py`` (CRPS within 2 % of the best, spread/skill in 0.8-1.2, fewest calls);
- :mod:`slams.studies.exact_posterior`: the exact Gaussian trajectory that a sampler's
  posterior is checked against.

A study that reassimilates a finished run's cells calls
:func:`slams.assimilation.assimilate_case`.
"""
