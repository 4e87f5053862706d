# SLAMS: score-based latent data assimilation in a multimodal setting.
#   make demo                                        # embedded synthetic world, minutes on a CPU
#   snakemake --cores 8 --profile slurm              # the paper (config.yaml) on a GPU cluster
# Every output lands in results/<name>/; see README.md.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# config.yaml beside this Snakefile, so that --directory elsewhere still finds it.
configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/regrid.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/assimilate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        **FIGURES,
        scores=SCORES,
        significance=SIGNIFICANCE,
