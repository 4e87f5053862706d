# One tidy table of every score.


rule evaluate:
    """Scores of every analysis, per level, on observed days and on all days."""
    input:
        analysis_files(),
    output:
        SCORES,
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCHMARKS}/evaluate.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../scripts/evaluate.py"
