"""Rule case_figure: the maps of one named case (paper figures 3-6)."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.figures.build import case_map_figure
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
case_map_figure(
    dict(zip(snakemake.params.methods, snakemake.input, strict=True)),
    snakemake.output.png,
    case=snakemake.wildcards.case,
    figure_label=snakemake.params.label,
    level=snakemake.params.level,
    show=snakemake.params.show,
    missing=snakemake.params.missing,
)
