"""Rule synthetic: the embedded synthetic world (see slams.data.synthetic)."""

from slams.warm import delegate

delegate(snakemake)  # run in a warm process if one can be had (slams.warm)

from slams.data.synthetic import write_synthetic
from slams.workflow import setup_logging

setup_logging(snakemake.log[0])
opts = snakemake.params.synthetic
write_synthetic(
    snakemake.params.out_dir,
    years=snakemake.params.years,
    levels=snakemake.params.levels,
    seed=opts["seed"],
    era5_resolution=opts["era5_resolution"],
    cpc_resolution=opts["cpc_resolution"],
    olr_resolution=opts["olr_resolution"],
)
