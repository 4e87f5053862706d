"""Rule evaluate: every analysis file into the tidy scores and rank-histogram tables."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.evaluate import evaluate_files
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
scores, rank_histograms, daily = evaluate_files(list(snakemake.input))
scores.to_csv(snakemake.output.scores, index=False)
rank_histograms.to_csv(snakemake.output.rank_histograms, index=False)
daily.to_csv(snakemake.output.daily, index=False)
