# SLAMS: score-based latent data assimilation in a multimodal setting.
#   make demo                                        # embedded synthetic world, minutes on a CPU
#   snakemake --cores 8 --profile slurm              # the paper (config.yaml) on a GPU cluster
# Every output lands in results/<name>/; see README.md.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from slams.preflight import preflight

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


# Before any job is submitted (slams.preflight): free disk for the downloads, the packages of
# the chosen data routes and, under Slurm, memory requests against predicted peaks. A dry run
# prints what it finds; a run stops on it (onstart: after the DAG, before the first job).
# --config preflight=False skips it.
PREFLIGHT_PATHS = dict(
    raw=RAW, era5_month=ERA5_MONTH, olr_all=OLR_ALL, regridded=REGRIDDED
)
if workflow.output_settings.dryrun:
    preflight(workflow, config, PREFLIGHT_PATHS)


onstart:
    preflight(workflow, config, PREFLIGHT_PATHS)


rule all:
    default_target: True
    input:
        **FIGURES,
        scores=SCORES,
        significance=SIGNIFICANCE,
