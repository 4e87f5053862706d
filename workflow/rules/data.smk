# Raw inputs: the embedded synthetic world, or (issue 7) the real downloads.

if DATA["source"] == "synthetic":

    rule synthetic:
        """Write the seeded synthetic ERA5-, CPC- and OLR-like files, one per year and source."""
        output:
            files=expand(RAW, source=SOURCES, year=YEARS),
        log:
            f"{RESOURCES}/logs/synthetic.log",
        benchmark:
            f"{RESOURCES}/benchmarks/synthetic.tsv"
        conda:
            "../../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            out_dir=lambda wildcards, output: str(Path(output.files[0]).parents[1]),
            years=YEARS,
            levels=DATA["levels"],
            synthetic=DATA["synthetic"],
        script:
            "../scripts/synthetic.py"

else:
    raise WorkflowError(
        "data.source 'real' needs the ERA5/CPC/OLR download rules, which are not implemented "
        "yet; run the embedded synthetic world with --configfile presets/demo.yaml"
    )
