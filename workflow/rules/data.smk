# Raw inputs: the embedded synthetic world, or the real downloads (ERA5, CPC, OLR).
# Either way the result is RAW: one file per source and year, in the source's own format.

if DATA["source"] == "synthetic":

    rule synthetic:
        """Write one year of the seeded synthetic ERA5-, CPC- and OLR-like files (a year does not
        depend on the others, so the years are independent jobs)."""
        output:
            files=expand(RAW, source=SOURCES, allow_missing=True),
        log:
            f"{RESOURCES}/logs/synthetic/{{year}}.log",
        benchmark:
            f"{RESOURCE_BENCHMARKS}/synthetic/{{year}}.tsv"
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            out_dir=lambda wildcards, output: str(Path(output.files[0]).parents[1]),
            years=lambda wildcards: [int(wildcards.year)],
            levels=DATA["levels"],
            synthetic=DATA["synthetic"],
        script:
            "../scripts/synthetic.py"

else:
    # Downloads are local rules: cluster compute nodes often have no way out to the internet,
    # and the work is waiting on servers, not computing. extract_olr is local too (seconds per
    # year, cheaper than 23 queued Slurm jobs); merge_era5 moves ~15 GB a year: a Slurm job.
    # No Snakemake `retries`: the scripts retry transient failures themselves (HTTP with
    # backoff, the cdsapi client) and fail at once on permanent ones (404, an invalid file,
    # credentials), which another attempt would only repeat.
    # Timeouts, retries and the CDS request limit are read from config["download"] by the
    # scripts, not passed as params: changing them must not make Snakemake fetch finished
    # files again (params are a rerun trigger).
    MONTHS = [f"{month:02d}" for month in range(1, 13)]

    wildcard_constraints:
        month=r"0[1-9]|1[0-2]",

    if DATA["era5_source"] == "weatherbench2":

        rule download_era5_weatherbench2:
            """One year of ERA5 daily-mean temperature from WeatherBench 2's public zarr store."""
            output:
                RAW.format(source="era5", year="{year}"),
            log:
                f"{RESOURCES}/logs/download/era5-{{year}}.log",
            benchmark:
                f"{RESOURCE_BENCHMARKS}/download/era5-{{year}}.tsv"
            localrule: True
            conda:
                "../../envs/download.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=120,
            params:
                levels=DATA["levels"],
            script:
                "../scripts/download_era5_weatherbench2.py"

    else:

        rule download_era5:
            """One month of ERA5 daily-mean temperature on the pressure levels, from the CDS."""
            output:
                temp(ERA5_MONTH),
            log:
                f"{RESOURCES}/logs/download/era5-{{year}}-{{month}}.log",
            benchmark:
                f"{RESOURCE_BENCHMARKS}/download/era5-{{year}}-{{month}}.tsv"
            localrule: True
            conda:
                "../../envs/download.yaml"
            threads: 1
            resources:
                mem_mb=2000,
                runtime=24 * 60,
            params:
                levels=DATA["levels"],
                slots_dir=lambda wildcards, output: str(
                    Path(output[0]).parent / ".slots"
                ),
            script:
                "../scripts/download_era5.py"

        rule merge_era5:
            """The twelve months of ERA5 of one year in one file, streamed day by day."""
            input:
                expand(ERA5_MONTH, month=MONTHS, allow_missing=True),
            output:
                RAW.format(source="era5", year="{year}"),
            log:
                f"{RESOURCES}/logs/download/era5-{{year}}.log",
            benchmark:
                f"{RESOURCE_BENCHMARKS}/download/era5-{{year}}.tsv"
            conda:
                "../../envs/download.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=120,
            script:
                "../scripts/merge_era5.py"

    rule download_cpc:
        """One year of CPC global daily gauge precipitation (0.5 degrees) from NOAA PSL."""
        output:
            RAW.format(source="cpc", year="{year}"),
        log:
            f"{RESOURCES}/logs/download/cpc-{{year}}.log",
        benchmark:
            f"{RESOURCE_BENCHMARKS}/download/cpc-{{year}}.tsv"
        localrule: True
        conda:
            "../../envs/download.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=120,
        params:
            url=lambda wildcards: config["download"]["cpc"]["url"].format(
                year=wildcards.year
            ),
        script:
            "../scripts/download_cpc.py"

    rule download_olr:
        """NOAA interpolated daily OLR (2.5 degrees), every year in one file."""
        output:
            OLR_ALL,
        log:
            f"{RESOURCES}/logs/download/olr.log",
        benchmark:
            f"{RESOURCE_BENCHMARKS}/download/olr.tsv"
        localrule: True
        conda:
            "../../envs/download.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=120,
        params:
            url=config["download"]["olr"]["url"],
        script:
            "../scripts/download_olr.py"

    rule extract_olr:
        """One year of OLR cut out of NOAA's multi-year file, packed as delivered."""
        input:
            OLR_ALL,
        output:
            RAW.format(source="olr", year="{year}"),
        log:
            f"{RESOURCES}/logs/download/olr-{{year}}.log",
        benchmark:
            f"{RESOURCE_BENCHMARKS}/download/olr-{{year}}.tsv"
        localrule: True
        conda:
            "../../envs/download.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        script:
            "../scripts/extract_olr.py"
