"""The workflow's figures and summary, in three parts:

- :mod:`slams.figures.summary`: what each figure shows (cases, levels, methods), the captions'
  facts and ``summary.md``; no plotting, so that the Snakefile can import it while it is
  parsed;
- :mod:`slams.figures.draw`: the drawing primitives (matplotlib and seaborn on the Agg
  backend), from tidy tables and arrays to PNG and PDF;
- :mod:`slams.figures.build`: each figure of a run from its files (analyses, score tables,
  loss logs), what the ``figures`` rules' scripts call.

Importing this package imports neither matplotlib nor torch.
"""
