# Every source onto the one cell-centred target grid, year by year.


rule regrid:
    """Conservative regridding of one year of one source to the target grid."""
    input:
        RAW,
    output:
        REGRIDDED,
    log:
        f"{RESOURCES}/logs/regrid-{RESOLUTION}deg/{{source}}-{{year}}.log",
    benchmark:
        f"{RESOURCE_BENCHMARKS}/regrid-{RESOLUTION}deg/{{source}}-{{year}}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        resolution=DATA["resolution"],
        backend=DATA["regrid_backend"],
    script:
        "../scripts/regrid.py"
