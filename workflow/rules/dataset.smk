# Aligned, normalised splits with validity masks, statistics from the training years only.


rule dataset:
    """Assemble train/validation/test splits, normalisation statistics and the climatology."""
    input:
        t=expand(REGRIDDED, source="era5", year=YEARS),
        precip=expand(REGRIDDED, source="cpc", year=YEARS),
        olr=expand(REGRIDDED, source="olr", year=YEARS),
    output:
        splits=expand(DATASET, split=SPLITS),
        stats=STATS,
        climatology=CLIMATOLOGY,
    log:
        f"{LOGS}/dataset.log",
    benchmark:
        f"{BENCHMARKS}/dataset.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        out_dir=parent_of("stats"),
        splits=config["split"],
    script:
        "../scripts/dataset.py"
